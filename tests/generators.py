"""Tiny randomly initialised generators around a CLIP encoder: a Stable Diffusion pipeline and a LLaVA."""

import torch
from transformers import CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration


def tiny_stable_diffusion(text_encoder, tokenizer):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_encoder.config.hidden_size,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def run_tiny_llava(tower: CLIPVisionModel, *, new_tokens: int = 3) -> int:
    """Build a tiny LLaVA around ``tower`` and generate; returns how many tokens it generated."""
    config = LlavaConfig(vision_config=tower.config.to_dict(),
                         text_config={"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
                         image_token_index=5, vision_feature_layer=-2)
    llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower.load_state_dict(tower.state_dict())
    image_tokens = (tower.config.image_size // tower.config.patch_size) ** 2
    input_ids = torch.tensor([[1] + [5] * image_tokens + [7, 8]])
    size = tower.config.image_size
    out = llava.generate(input_ids=input_ids, pixel_values=torch.randn(1, 3, size, size), max_new_tokens=new_tokens,
                         do_sample=False)
    return out.shape[1] - input_ids.shape[1]


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                         latent_channels=4, norm_num_groups=8, sample_size=16)


def tiny_sdxl(text_encoder, tokenizer, text_encoder_2, tokenizer_2):
    """A tiny StableDiffusionXLPipeline: the UNet cross-attends to both encoders' hidden states (concatenated) and
    takes text_encoder_2's projected pooled output plus 6 time ids as its added condition, as SDXL's does."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        projection_class_embeddings_input_dim=6 * time_dim + text_encoder_2.config.projection_dim)
    return StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=EulerDiscreteScheduler())
