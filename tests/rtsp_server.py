"""A live RTSP test server for tests/test_rtsp.py: GStreamer's rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, python3-gi and the plugins) serving a moving test pattern as H.264.

Run by Debian's own python3 (/usr/bin/python3), whose `gi` the packages install:
    /usr/bin/python3 tests/rtsp_server.py [--port 8554] [--mount /live] [--fps 30] [--gop N]  # prints "ready", serves
    /usr/bin/python3 tests/rtsp_server.py --check                        # exit 0 if everything is installed
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph264pay name=pay0 pt=96 )")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--mount", default="/live")
    p.add_argument("--size", default="320x240")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=int, help="frames between keyframes (default: one a second; x264's own default is 250)")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    Gst.init(None)
    missing = [e for e in ("videotestsrc", "x264enc", "rtph264pay") if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.check:
        return 0
    w, h = args.size.split("x")
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(w=w, h=h, fps=args.fps, gop=args.gop or args.fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if not server.attach(None):
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
