"""Tiny Hugging Face models for the built-in ``transformers`` zoo: built from config objects (random, seeded weights;
nothing is downloaded), small enough that a whole zoo runs in minutes on a laptop. Each factory returns
``(model, example_inputs)`` with batch 2 and sequence 16 (a decoder's 8); the zoo declares batch and sequence
dynamic. ``onnxgate.examples.tiny_transformers`` holds BERT, GPT-2 and T5; these add the other common shapes of
the family (distilled and ALBERT-style encoders, ELECTRA, an encoder-decoder BART, a vision transformer).
"""

from __future__ import annotations

from ..examples.tiny_transformers import VOCAB

_TEXT = {"vocab_size": VOCAB, "max_position_embeddings": 128}


def _build(config_cls: str, model_cls: str, **config):
    import torch
    import transformers

    cfg = getattr(transformers, config_cls)(**config)
    cfg.return_dict = True
    if hasattr(cfg, "use_cache"):
        cfg.use_cache = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(cfg).eval()


def _text(seq: int = 16, decoder_seq: int | None = None) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    feeds = {"input_ids": torch.randint(0, VOCAB, (2, seq), generator=g),
             "attention_mask": torch.ones(2, seq, dtype=torch.int64)}
    if decoder_seq:
        feeds["decoder_input_ids"] = torch.randint(0, VOCAB, (2, decoder_seq), generator=g)
    return feeds


def distilbert():
    """DistilBertModel: 2 layers, dim 64."""
    return _build("DistilBertConfig", "DistilBertModel", n_layers=2, n_heads=4, dim=64, hidden_dim=128,
                  **_TEXT), _text()


def albert():
    """AlbertModel: shared layers, embedding 32, hidden 64."""
    return _build("AlbertConfig", "AlbertModel", embedding_size=32, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=128, **_TEXT), _text()


def electra():
    """ElectraModel (the discriminator's encoder): 2 layers, hidden 64."""
    return _build("ElectraConfig", "ElectraModel", embedding_size=32, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=128, **_TEXT), _text()


def bart():
    """BartForConditionalGeneration: 2+2 layers, d_model 64."""
    return _build("BartConfig", "BartForConditionalGeneration", d_model=64, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                  **_TEXT), _text(decoder_seq=8)


def vit():
    """ViTForImageClassification on 32x32 images, patch 8, 2 layers, 10 classes."""
    import torch

    model = _build("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, hidden_size=64,
                   num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=10)
    return model, {"pixel_values": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
