#!/usr/bin/env python3
"""Generate a tiny random-weight llama-architecture GGUF model for offline tests.

Needs only ``numpy`` and the ``gguf`` package; runs in about 0.1 s; the output
(about 460 KB) is byte-identical for the same arguments.  llama.cpp's own
``llama-server`` (here through the ``xllamacpp`` wheel) loads it.

Tokenizer: GPT-2 style byte-level BPE ("gpt2" model, "gpt-2" pre-tokenizer):
  ids 0..255   one token per byte, spelled with GPT-2's bytes_to_unicode map
  ids 256..262 a few merged tokens (llama.cpp requires a non-empty merges list)
  263 <|endoftext|> (bos/pad), 264 <|im_start|>, 265 <|im_end|> (eos), all CONTROL
Chat template: ChatML.

The weights are random but shaped: dimension 0 of every token embedding is a
constant, which after the final RMSNorm acts as a per-token output bias.
Lowercase letters, space and the merged tokens get +1.5, '"' gets 1.6, '}' and
']' get 0.0, everything else (digits, other punctuation, EOS) -1.5.  So:

* free text is printable gibberish ("hljon thekp..."), about 3% '"';
* EOS is practically never sampled: a reply ends at ``max_tokens``
  (finish_reason "length"), at a ``stop`` string, or with
  ``logit_bias {"265": 100}``;
* under a JSON grammar strings close after a few dozen characters and objects
  close instead of growing, so the result is valid JSON in ~15-120 tokens;
* temperature 0 or a fixed seed gives repeatable output.

Usage:  python make_tiny_gguf.py OUT.gguf [--seed 0]
Import: ``from realserver.make_tiny_gguf import make_tiny_gguf; make_tiny_gguf("tiny.gguf")``
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Tuple

#: The ChatML chat template stored in the model.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MERGES = ["Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_ID = 265  # <|im_end|>; logit_bias {"265": 100} makes the model stop at once


def _import_deps():
    try:
        import numpy
        import gguf
    except ImportError as exc:
        raise ImportError("make_tiny_gguf needs numpy and gguf (%s). Run:  python -m pip install -e \".[e2e]\""
                          % exc) from exc
    return numpy, gguf


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_vocab() -> Tuple[List[str], List[int], Dict[str, int], Dict[int, str]]:
    _, gguf = _import_deps()
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    types = [gguf.TokenType.NORMAL] * 256
    for merge in MERGES:
        a, b = merge.split(" ")
        assert a in tokens and b in tokens, merge
        tokens.append(a + b)
        types.append(gguf.TokenType.NORMAL)
    special_ids = {}
    for special in SPECIALS:
        special_ids[special] = len(tokens)
        tokens.append(special)
        types.append(gguf.TokenType.CONTROL)
    return tokens, types, special_ids, b2u


def make_tiny_gguf(out: str, *, seed: int = 0, layers: int = 2, embd: int = 64, ff: int = 128, heads: int = 4,
                   ctx: int = 4096, eos_bias: float = -1.5, quote_bias: float = 1.6,
                   chat_template: Optional[str] = None) -> str:
    """Write the tiny model to ``out`` and return ``out``.

    ``ctx`` is the model's trained context length (the server's ``n_ctx`` may
    be smaller).  Same arguments, same bytes.
    """
    np, gguf = _import_deps()
    tokens, types, special_ids, b2u = build_vocab()
    n_vocab = len(tokens)
    E, F, H, L = embd, ff, heads, layers
    assert E % H == 0 and (E // H) % 2 == 0
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def rand(*shape: int, std: float = 0.02):
        return (rng.standard_normal(shape) * std).astype(f32)

    # token embeddings: numpy shape (n_vocab, n_embd) == ggml {n_embd, n_vocab}
    tok_embd = rand(n_vocab, E, std=0.1)
    out_w = rand(n_vocab, E, std=0.3)
    tok_embd[:, 0] = 1.0  # a constant channel: acts as a per-token bias after the final norm
    allowed = {b2u[c] for c in b'abcdefghijklmnopqrstuvwxyz "'}
    allowed |= {a + b for a, b in (m.split(" ") for m in MERGES)}
    out_w[:, 0] = np.array([1.5 if t in allowed else -1.5 for t in tokens], dtype=f32)
    out_w[special_ids["<|im_end|>"], 0] = eos_bias
    out_w[ord('"'), 0] = quote_bias   # JSON strings close after ~30 characters under a grammar
    out_w[ord("}"), 0] = 0.0          # closing brackets beat ',' under a grammar: objects stay small
    out_w[ord("]"), 0] = 0.0

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("tiny-random-llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(ctx)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_rope_dimension_count(E // H)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(special_ids["<|endoftext|>"])
    w.add_eos_token_id(special_ids["<|im_end|>"])
    w.add_pad_token_id(special_ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template or CHATML_TEMPLATE)

    w.add_tensor("token_embd.weight", tok_embd)
    w.add_tensor("output_norm.weight", np.ones(E, dtype=f32))
    w.add_tensor("output.weight", out_w)
    for i in range(L):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", np.ones(E, dtype=f32))
        w.add_tensor(p + "attn_q.weight", rand(E, E))
        w.add_tensor(p + "attn_k.weight", rand(E, E))
        w.add_tensor(p + "attn_v.weight", rand(E, E))
        w.add_tensor(p + "attn_output.weight", rand(E, E))
        w.add_tensor(p + "ffn_norm.weight", np.ones(E, dtype=f32))
        w.add_tensor(p + "ffn_gate.weight", rand(F, E))
        w.add_tensor(p + "ffn_up.weight", rand(F, E))
        w.add_tensor(p + "ffn_down.weight", rand(E, F))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ctx", type=int, default=4096, help="the model's trained context length")
    args = parser.parse_args(argv)
    make_tiny_gguf(args.out, seed=args.seed, ctx=args.ctx)
    print("wrote %s (eos id %d)" % (args.out, EOS_ID), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
