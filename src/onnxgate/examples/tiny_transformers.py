"""Tiny transformers built from config objects (random weights, no download): an encoder, a decoder-only LM and
an encoder-decoder. Factories for refs such as ``onnxgate.examples.tiny_transformers:bert``; each returns
``(model, example_inputs)`` with batch 2 and sequence 16 (decoder 8), so batch and sequence can be declared dynamic.
"""

from __future__ import annotations

VOCAB = 1000


def _inputs(seq: int = 16, decoder_seq: int | None = None):
    import torch

    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, VOCAB, (2, seq), generator=g),
              "attention_mask": torch.ones(2, seq, dtype=torch.int64)}
    if decoder_seq:
        inputs["decoder_input_ids"] = torch.randint(0, VOCAB, (2, decoder_seq), generator=g)
    return inputs


def _build(config_cls: str, model_cls: str, **config):
    import torch
    import transformers

    cfg = getattr(transformers, config_cls)(**config)
    cfg.return_dict = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(cfg).eval()


def bert():
    """Encoder: BertModel, 2 layers, hidden 64."""
    model = _build("BertConfig", "BertModel", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
    return model, _inputs()


def gpt2():
    """Decoder-only LM: GPT2LMHeadModel, 2 layers, no KV cache outputs."""
    model = _build("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                   n_positions=128, use_cache=False)
    return model, _inputs()


def t5():
    """Encoder-decoder: T5ForConditionalGeneration, 2+2 layers."""
    model = _build("T5Config", "T5ForConditionalGeneration", vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128,
                   num_layers=2, num_decoder_layers=2, num_heads=4, use_cache=False, decoder_start_token_id=0)
    return model, _inputs(decoder_seq=8)
