"""An independent oracle of LLaMA-VID's inference, written from the upstream code, not from vila_edge.

Upstream read (dvlab-research/LLaMA-VID ``b3d3ae2``): ``llamavid/model/multimodal_encoder/eva_vit.py``
(VisionTransformer, Block, Attention, PatchEmbed, interpolate_pos_embed, EVAVisionTowerLavis.load_model/forward),
``llamavid/model/qformer.py`` (BertEmbeddings, BertSelfAttention, BertAttention, BertLayer, BertEncoder,
BertModel.get_extended_attention_mask/forward), ``llamavid/model/llamavid_arch.py`` (init_bert,
initialize_attention_modules, vlm_attention, token_generation, prepare_inputs_labels_for_multimodal),
``llamavid/model/multimodal_projector/builder.py`` (mlp2x_gelu), ``llamavid/conversation.py`` (conv_vicuna_imgsp_v1,
SeparatorStyle.TWO), ``llamavid/serve/cli.py`` (load_video, the prompt flow), LLaVA's ``mm_utils.tokenizer_image_token``.

Everything in float32 on CPU (upstream: fp16 on GPU). Weights are read straight from the released files with
torch.load; preprocessing is transformers' CLIPImageProcessor, as upstream. ``UPSTREAM:`` marks subtle details.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertTokenizer, CLIPImageProcessor, LlamaConfig, LlamaForCausalLM

IMAGE_TOKEN_INDEX = -200
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def load_video_indices(n_frames: int, avg_fps: float, fps: float = 1.0) -> list[int]:
    """serve/cli.py::load_video: every round(avg_fps / fps)-th frame from frame 0."""
    step = round(avg_fps / fps)
    return list(range(0, n_frames, step))


class Upstream:
    def __init__(self, root: Path, bert_dir: Path, tower: Path | None = None):
        self.root = Path(root)
        self.config = json.loads((self.root / "config.json").read_text())
        state = {}
        for shard in sorted(self.root.glob("pytorch_model-*.bin")):
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
        self.state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        self.processor = CLIPImageProcessor.from_pretrained(self.root / self.config["image_processor"])
        self.eva = self._load_eva(tower or self.root / self.config["mm_vision_tower"])
        self.bert = json.loads((Path(bert_dir) / "config.json").read_text())
        # init_bert: BertTokenizer("bert-base-uncased", truncation_side=...) + [DEC]; vlm_attention truncates left
        self.bert_tok = BertTokenizer.from_pretrained(bert_dir, truncation_side="left")
        self.bert_tok.add_special_tokens({"bos_token": "[DEC]"})
        self.llm = self._load_llm()

    # ---- eva_vit.py -------------------------------------------------------------------------------------------

    def _load_eva(self, path: Path) -> dict:
        sd = {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
        size = self.processor.size["shortest_edge"]  # UPSTREAM: img_size = image_processor.size['shortest_edge']
        num_patches = (size // 14) ** 2
        # interpolate_pos_embed
        pos = sd["pos_embed"]
        orig, new = int((pos.shape[-2] - 1) ** 0.5), int(num_patches**0.5)
        if orig != new:
            extra, tokens = pos[:, :1], pos[:, 1:]
            tokens = tokens.reshape(-1, orig, orig, pos.shape[-1]).permute(0, 3, 1, 2)
            tokens = F.interpolate(tokens, size=(new, new), mode="bicubic", align_corners=False)
            sd["pos_embed"] = torch.cat((extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
        sd["depth"] = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        return sd

    def eva_forward(self, x: torch.Tensor) -> torch.Tensor:
        """VisionTransformer.forward_features: every block, no final norm."""
        sd = self.eva
        dim = sd["cls_token"].shape[-1]
        heads = dim // 88  # UPSTREAM: num_heads = out_channel // 88
        x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
        x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1) + sd["pos_embed"]
        for i in range(sd["depth"]):
            p = f"blocks.{i}."
            h = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
            bias = torch.cat((sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]))
            qkv = F.linear(h, sd[p + "attn.qkv.weight"], bias)
            B, N, _ = h.shape
            qkv = qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = q * (dim // heads) ** -0.5
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            a = (attn @ v).transpose(1, 2).reshape(B, N, -1)
            x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
            h = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
            h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
            x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        return x

    # ---- qformer.py (LAVIS BertModel with query_embeds) ----------------------------------------------------------

    def _w(self, name):
        return self.state["model.vlm_att_encoder.bert." + name]

    def _linear(self, x, name):
        return F.linear(x, self._w(name + ".weight"), self._w(name + ".bias"))

    def _ln(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self._w(name + ".weight"), self._w(name + ".bias"),
                            eps=self.bert["layer_norm_eps"])

    def _bert_attention(self, hidden, mask, prefix, encoder=None):
        """BertAttention: BertSelfAttention then BertSelfOutput (dense, LayerNorm(x + input))."""
        heads = self.bert["num_attention_heads"]
        kv = encoder if encoder is not None else hidden

        def split(t):
            return t.view(*t.shape[:2], heads, -1).permute(0, 2, 1, 3)

        q = split(self._linear(hidden, prefix + ".self.query"))
        k, v = split(self._linear(kv, prefix + ".self.key")), split(self._linear(kv, prefix + ".self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + mask
        ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(*hidden.shape[:2], -1)
        return self._ln(self._linear(ctx, prefix + ".output.dense") + hidden, prefix + ".output.LayerNorm")

    def _ffn(self, x, prefix, suffix):
        h = F.gelu(self._linear(x, f"{prefix}.intermediate{suffix}.dense"))
        return self._ln(self._linear(h, f"{prefix}.output{suffix}.dense") + x, f"{prefix}.output{suffix}.LayerNorm")

    def qformer(self, input_ids, query_embeds, attention_mask, encoder_hidden_states, encoder_attention_mask):
        seq = input_ids.shape[1]
        emb = F.embedding(input_ids, self._w("embeddings.word_embeddings.weight"))
        emb = emb + F.embedding(torch.arange(seq)[None], self._w("embeddings.position_embeddings.weight"))
        x = self._ln(torch.cat((query_embeds, emb), dim=1), "embeddings.LayerNorm")  # UPSTREAM: no token types
        ext = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0  # is_decoder False
        enc_ext = (1.0 - encoder_attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        nq = query_embeds.shape[1]
        for i in range(self.bert["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            att = self._bert_attention(x, ext, p + ".attention")
            q = att[:, :nq]
            if i % 2 == 0:  # UPSTREAM: add_cross_attention, layer_num % cross_attention_freq(2) == 0
                q = self._bert_attention(q, enc_ext, p + ".crossattention", encoder_hidden_states)
            out = self._ffn(q, p, "_query")
            if att.shape[1] > nq:
                out = torch.cat([out, self._ffn(att[:, nq:], p, "")], dim=1)
            x = out
        return x

    # ---- llamavid_arch.py ------------------------------------------------------------------------------------------

    def _att(self, name):
        return self.state["model." + name]

    def _att_linear(self, x, name):
        return F.linear(x, self._att(name + ".weight"), self._att(name + ".bias"))

    def vlm_attention(self, image_features: torch.Tensor, prompt: str, image_counts: list[int] | None):
        """One prompt (upstream's prompts = [[inp]]): the image_counts branch for a video, per image otherwise."""
        tok = self.bert_tok([prompt], padding="longest", truncation=True, max_length=256, return_tensors="pt")
        input_ids, attention_masks = tok.input_ids, tok.attention_mask
        image_atts = torch.ones(image_features.size()[:-1], dtype=torch.long)
        if image_counts is None:
            feats, atts = image_features, image_atts
            input_ids = input_ids.expand(len(feats), -1)
            attention_masks = attention_masks.expand(len(feats), -1)
        else:
            feats = image_features[: image_counts[0]][None].expand(1, -1, -1, -1).flatten(0, 1)
            atts = image_atts[: image_counts[0]][None].expand(1, -1, -1).flatten(0, 1)
            input_ids = input_ids[:, None].expand(-1, image_counts[0], -1).flatten(0, 1)
            attention_masks = attention_masks[:, None].expand(-1, image_counts[0], -1).flatten(0, 1)
        bert_feat = feats.clone()
        if self.config.get("mm_vision_select_feature", "patch") == "patch" and feats.shape[1] % 2 == 1:
            feats = feats[:, 1:]  # UPSTREAM: the class token leaves token generation, not the Q-Former's input
        query = self._att("vlm_att_query").expand(bert_feat.shape[0], -1, -1)
        query_atts = torch.cat([torch.ones(query.size()[:-1], dtype=torch.long), attention_masks], dim=1)
        mm_in = F.layer_norm(bert_feat, (bert_feat.shape[-1],), self._att("vlm_att_ln.weight"), self._att("vlm_att_ln.bias"))
        out = self.qformer(input_ids, query, query_atts, mm_in, atts)[:, : query.shape[1]]
        text_q = self._att_linear(out, "vlm_att_projector")
        final = self.token_generation(text_q, feats)
        if image_counts is not None:
            final = final.reshape(1, image_counts[0], *final.shape[-2:]).flatten(1, 2)
        return final

    def mm_projector(self, x):
        return self._att_linear(F.gelu(self._att_linear(x, "mm_projector.0")), "mm_projector.2")

    def token_generation(self, text_q, vis_embed):
        ctx = text_q @ self._att_linear(vis_embed, "vlm_att_key_projector").transpose(-1, -2)
        ctx = ctx / (vis_embed.shape[-1] ** 0.5)
        ctx = (ctx.softmax(-1) @ vis_embed).mean(1)
        ctx = self._att_linear(ctx[:, None], "vlm_att_val_projector")
        kind = self.config.get("compress_type")
        if kind is not None:
            if "grid" in kind:
                grid = int(kind.split("grid:")[-1])
                cur = int(vis_embed.shape[1] ** 0.5)
                stride = cur // grid
                v = vis_embed.reshape(vis_embed.shape[0], cur, cur, -1).permute(0, 3, 1, 2)
                vis_embed = F.avg_pool2d(v, padding=0, kernel_size=stride, stride=stride).permute(0, 2, 3, 1).flatten(1, 2)
            elif "mean" in kind:
                vis_embed = vis_embed.mean(dim=1, keepdim=True)
        return torch.cat([ctx, self.mm_projector(vis_embed)], dim=1)

    # ---- the LLM, the prompt, the splice -----------------------------------------------------------------------

    def _load_llm(self) -> LlamaForCausalLM:
        c = self.config
        config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                             num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                             num_key_value_heads=c["num_key_value_heads"], rms_norm_eps=c["rms_norm_eps"],
                             max_position_embeddings=c["max_position_embeddings"], rope_scaling=c["rope_scaling"])
        llm = LlamaForCausalLM(config)
        llm.load_state_dict({k: v for k, v in self.state.items() if not k.startswith(("model.vlm_att", "model.mm_proj"))})
        return llm.eval()

    def pixels(self, images) -> torch.Tensor:
        return self.processor.preprocess(images, return_tensors="pt")["pixel_values"]

    def prompt(self, question: str) -> str:
        """conv_vicuna_imgsp_v1 (SeparatorStyle.TWO), the image token first as serve/cli.py puts it."""
        return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"

    def input_ids(self, tokenizer, prompt: str) -> list[int]:
        """LLaVA mm_utils.tokenizer_image_token."""
        chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
        ids, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
            offset = 1
            ids.append(chunks[0][0])
        sep = [IMAGE_TOKEN_INDEX] * (offset + 1)
        inserted = [e for sub in zip(chunks, [sep] * len(chunks)) for e in sub][:-1]
        for x in inserted:
            ids.extend(x[offset:])
        return ids

    @torch.no_grad()
    def embeds(self, tokenizer, images: list, question: str, video: bool) -> torch.Tensor:
        """prepare_inputs_labels_for_multimodal for one sample with one <image>: a video (the frames as one
        [F, 3, S, S] entry, image_counts) or one image."""
        pixels = self.pixels(images)
        feats = self.eva_forward(pixels)
        tokens = self.vlm_attention(feats, question, [len(images)] if video else None)
        block = tokens[0] if video else tokens.flatten(0, 1)
        ids = torch.tensor(self.input_ids(tokenizer, self.prompt(question)))
        at = int(torch.where(ids == IMAGE_TOKEN_INDEX)[0][0])
        table = self.llm.get_input_embeddings()
        return torch.cat([table(ids[:at]), block, table(ids[at + 1 :])])

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, n: int) -> list[int]:
        out, cache, x = [], None, embeds[None]
        for _ in range(n):
            res = self.llm(inputs_embeds=x, past_key_values=cache, use_cache=True)
            cache = res.past_key_values
            token = int(res.logits[0, -1].argmax())
            out.append(token)
            x = self.llm.get_input_embeddings()(torch.tensor([[token]]))
        return out


def frame_tokens_np(up: Upstream, features: np.ndarray, question: str) -> np.ndarray:
    return up.vlm_attention(torch.from_numpy(features), question, None).numpy()
