"""Tiny random-weight models in real diffusers layout, built fully offline.

``make_tiny("wan-t2v", path)`` writes a folder that ``WanPipeline.from_pretrained``
(and the ``wan`` engine) loads exactly like a downloaded model: a
``model_index.json`` and one sub-folder per component. The weights are random,
so the videos are noise, but every code path of a real model runs: tokenizer,
text encoder, transformer, scheduler, VAE decode (and the image encoder for
Wan image-to-video). Tests, CI and ``bench/gpu_smoke.py`` use them; nothing is
downloaded from a hub.

The compression ratios match the real models (Wan: 8x spatial, 4x temporal,
2x2 patches; LTX-Video: 32x spatial, 8x temporal; CogVideoX: 8x spatial, 4x
temporal, 2x2 patches) so the size and frame rules are exercised for real.
Layer widths are a few channels so a 9-frame 64x64 clip takes well under a
second on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAMILIES = ("wan-t2v", "wan-i2v", "ltx-t2v", "ltx-i2v", "cogvideox-t2v", "cogvideox-i2v")

# Fixed seed: the same family always gives the same weights.
SEED = 0

# A few sentences for the tokenizer: enough pieces that prompts tokenize into
# several tokens; anything unseen becomes <unk>, which is fine for noise models.
_CORPUS = [
    "a cat playing piano on a stage, cinematic light",
    "a drone shot over a snowy mountain at sunrise",
    "two dogs running on the beach, slow motion, waves",
    "a city street at night with neon signs and rain",
    "an astronaut riding a horse in a field of flowers",
    "close up of a red flower opening, time lapse",
    "the quick brown fox jumps over the lazy dog",
    "blurry, low quality, distorted, watermark, text",
]


def make_tiny(family: str, out_dir: Path) -> Path:
    """Write a tiny random-weight model of ``family`` (see ``FAMILIES``) into ``out_dir``."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny model family {family!r} (families: {', '.join(FAMILIES)})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Seeded through a fork of the global RNG so that building a model does not
    # disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        pipe = _BUILDERS[family]()
    for component in pipe.components.values():
        # Fresh modules are in training mode (UMT5 has dropout): save them in eval mode.
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.save_pretrained(out_dir)
    return out_dir


def make_tokenizer() -> Any:
    """A small Unigram tokenizer trained here, as a ``PreTrainedTokenizerFast`` (T5-like)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )


def _t5_config(vocab_size: int, *, umt5: bool) -> Any:
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
    if umt5:
        from transformers import UMT5Config

        return UMT5Config(**common)
    from transformers import T5Config

    return T5Config(**common)


def _wan_components(*, i2v: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    tokenizer = make_tokenizer()
    text_encoder = UMT5EncoderModel(_t5_config(len(tokenizer), umt5=True))
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36 if i2v else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        image_dim=4 if i2v else None,
    )
    components: dict[str, Any] = {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }
    if i2v:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        components["image_encoder"] = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=4,
                projection_dim=4,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                intermediate_size=16,
                patch_size=1,
            )
        )
        components["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    return components


def _wan_t2v() -> Any:
    from diffusers import WanPipeline

    return WanPipeline(**_wan_components(i2v=False))


def _wan_i2v() -> Any:
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(**_wan_components(i2v=True))


def _ltx_components() -> dict[str, Any]:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5EncoderModel

    tokenizer = make_tokenizer()
    text_encoder = T5EncoderModel(_t5_config(len(tokenizer), umt5=False))
    # Real LTX-Video: patch 4 then three 2x stages = 32x spatial, 8x temporal.
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    # LTX-Video's own scheduler config: resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def _ltx_t2v() -> Any:
    from diffusers import LTXPipeline

    return LTXPipeline(**_ltx_components())


def _ltx_i2v() -> Any:
    from diffusers import LTXImageToVideoPipeline

    return LTXImageToVideoPipeline(**_ltx_components())


def _cogvideox_components(*, i2v: bool) -> dict[str, Any]:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5EncoderModel

    tokenizer = make_tokenizer()
    text_encoder = T5EncoderModel(_t5_config(len(tokenizer), umt5=False))
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    # The same tiny sizes for both; the variants differ as the real ones do.
    shared = {
        "out_channels": 4,
        "time_embed_dim": 2,
        "text_embed_dim": 32,
        "num_layers": 1,
        "sample_width": 12,
        "sample_height": 8,
        "sample_frames": 9,
        "patch_size": 2,
        "temporal_compression_ratio": 4,
        "max_text_seq_length": 16,
    }
    if i2v:
        # Like THUDM/CogVideoX-5b-I2V: rotary plus *learned* positional
        # embeddings, which pin the size to the trained one (here 96x64, the
        # real model's 720x480 aspect ratio).
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=8,
            use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=True,
            **shared,
        )
    else:
        # Like THUDM/CogVideoX-2b: sin-cos positional embeddings, any size.
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            **shared,
        )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": CogVideoXDDIMScheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def _cogvideox_t2v() -> Any:
    from diffusers import CogVideoXPipeline

    return CogVideoXPipeline(**_cogvideox_components(i2v=False))


def _cogvideox_i2v() -> Any:
    from diffusers import CogVideoXImageToVideoPipeline

    return CogVideoXImageToVideoPipeline(**_cogvideox_components(i2v=True))


_BUILDERS: dict[str, Callable[[], Any]] = {
    "wan-t2v": _wan_t2v,
    "wan-i2v": _wan_i2v,
    "ltx-t2v": _ltx_t2v,
    "ltx-i2v": _ltx_i2v,
    "cogvideox-t2v": _cogvideox_t2v,
    "cogvideox-i2v": _cogvideox_i2v,
}
