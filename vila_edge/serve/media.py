"""A request's images and videos, decoded within limits: `data:` URLs (image/jpeg, png, webp; video/mp4, webm,
quicktime) always; http(s) URLs only when the server allows fetching, never `file://`, never a loopback or
private address unless allowed, with a size and a time limit. A decompression bomb is refused from the header."""

import base64
import binascii
import io
import ipaddress
import socket
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from ..caption import VideoClip
from ..errors import MediaError
from ..media import load_video_frames
from ..video import iter_frames, sample_plan
from .protocol import ApiError, MediaRef
from .settings import MediaPolicy

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp"}
VIDEO_TYPES = {"video/mp4", "video/webm", "video/quicktime"}


def _refuse(ref: MediaRef, message: str, code: str = "invalid_media", status: int = 400) -> ApiError:
    return ApiError(status, f"{ref.param}: {message}", ref.param, code)


def _data_url(ref: MediaRef, types: set[str], policy: MediaPolicy) -> bytes:
    head, sep, payload = ref.url.partition(",")
    mime = head[5:].split(";")[0].lower()
    if not sep or ";base64" not in head or mime not in types:
        raise _refuse(ref, f"a data URL must be data:<{'|'.join(sorted(types))}>;base64,...", "unsupported_media_type")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise _refuse(ref, f"larger than {policy.max_bytes >> 20} MiB", "media_too_large", 413)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(ref, "its base64 does not decode") from None


def _public_host(ref: MediaRef, host: str) -> None:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise _refuse(ref, f"cannot resolve {host}") from None
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            raise _refuse(ref, f"{host} is a private or loopback address; the server fetches only public URLs "
                               "(start it with --allow-private-urls to allow them)", "url_not_allowed", 403)


def _fetch(ref: MediaRef, policy: MediaPolicy) -> bytes:
    url = urllib.parse.urlsplit(ref.url)
    if url.scheme not in ("http", "https"):
        raise _refuse(ref, f"{url.scheme or 'this'} URLs are not accepted: send a data: URL (or http(s) when the "
                           "server allows fetching)", "url_not_allowed")
    if not policy.allow_url_fetch:
        raise _refuse(ref, "this server does not fetch URLs (start it with --allow-url-fetch); send the image as a "
                           "data: URL", "url_fetch_disabled", 403)
    if not policy.allow_private_urls:
        _public_host(ref, url.hostname or "")
    try:
        with urllib.request.urlopen(ref.url, timeout=policy.fetch_timeout_s) as r:  # noqa: S310 (scheme checked)
            data = r.read(policy.max_bytes + 1)
    except OSError as e:
        raise _refuse(ref, f"fetching it failed ({e})", "fetch_failed") from None
    if len(data) > policy.max_bytes:
        raise _refuse(ref, f"larger than {policy.max_bytes >> 20} MiB", "media_too_large", 413)
    return data


def _bytes_of(ref: MediaRef, types: set[str], policy: MediaPolicy) -> bytes:
    return _data_url(ref, types, policy) if ref.url.startswith("data:") else _fetch(ref, policy)


def decode_image(ref: MediaRef, policy: MediaPolicy) -> Image.Image:
    data = _bytes_of(ref, IMAGE_TYPES, policy)
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > policy.max_pixels:  # from the header: a bomb is never decoded
            raise _refuse(ref, f"{image.width}x{image.height} is more than {policy.max_pixels} pixels", "image_too_large",
                          413)
        if image.format not in ("JPEG", "PNG", "WEBP"):
            raise _refuse(ref, f"a {image.format} image; send JPEG, PNG or WebP", "unsupported_media_type")
        return image.convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise _refuse(ref, f"not a readable image ({e})") from None


def decode_video(ref: MediaRef, policy: MediaPolicy, rated: int | None = None) -> list[Image.Image]:
    """The video's frames, sampled as `caption --video` samples them: VILA's `frames` spread over it, or (`rated`,
    LLaMA-VID) one per second as its load_video, at most `frames` or `rated` of them."""
    data = _bytes_of(ref, VIDEO_TYPES, policy)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video"
        path.write_bytes(data)
        try:
            if rated:
                frames = [im for _, im in iter_frames(sample_plan(path, 1.0, ref.frames or rated))]
            else:
                frames = load_video_frames(path, ref.frames or policy.default_frames)
        except MediaError as e:
            raise _refuse(ref, str(e).replace(str(path), "the video")) from None
    for f in frames:
        if f.width * f.height > policy.max_pixels:
            raise _refuse(ref, f"{f.width}x{f.height} frames are more than {policy.max_pixels} pixels", "image_too_large",
                          413)
    return frames


def decode_media(refs_per_turn: list[list[MediaRef]], policy: MediaPolicy, max_images: int, streams=None,
                 clips: bool = False) -> tuple[list, list[int]]:
    """(every image in turn order, videos and live streams as their frames; how many each turn holds). `clips`
    (LLaMA-VID): a video or a stream's frames are one caption.VideoClip, in one image place."""
    images, counts, frames = [], [], 0
    for refs in refs_per_turn:
        n = 0
        for ref in refs:
            if ref.kind == "stream" and streams is None:
                raise _refuse(ref, "this server watches no live streams", "stream_not_found", 404)
            got = ([decode_image(ref, policy)] if ref.kind == "image" else
                   decode_video(ref, policy, max_images if clips else None) if ref.kind == "video"
                   else streams.newest(ref.url, ref.frames or 1, ref.param))
            frames += len(got)
            if clips and ref.kind != "image":
                got = [VideoClip(frames=got)]
            images += got
            n += len(got)
        counts.append(n)
    if frames > max_images:
        raise ApiError(400, f"{frames} images and video frames; this server takes at most {max_images} per request",
                       "messages", "too_many_images")
    return images, counts
