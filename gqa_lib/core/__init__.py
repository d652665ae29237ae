"""The core of the book: attention with H query heads and G key/value heads, and what it runs in.

- :mod:`.attention`: ``grouped_attention`` (MHA at G = H, MQA at G = 1), the
  reference paths that repeat K/V, and the ``GroupedQueryAttention`` layer;
- :mod:`.rope`: rotary position embeddings;
- :mod:`.kv_cache`: the preallocated KV cache and its size in bytes;
- :mod:`.model`: ``TransformerLM``, a small decoder-only model with generation;
- :mod:`.quantized_cache`: an int8/int4 KV cache (chapter 10).
"""
