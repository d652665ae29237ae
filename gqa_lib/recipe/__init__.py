"""The paper's recipe in miniature: convert a multi-head checkpoint to G KV heads, then uptrain it.

- :mod:`.convert`: mean pooling (and the alternatives) of K/V projection heads;
- :mod:`.head_similarity`: how alike the heads of a group are;
- :mod:`.corpus`, :mod:`.train`: the toy corpus and the training loop;
- :mod:`.experiments`: the stored grid of chapters 6-8 and the command that remakes it;
- :mod:`.hf`: the same conversion for Hugging Face Llama checkpoints;
- :mod:`.encoder`, :mod:`.minilm_experiment`: a real pretrained encoder converted (chapter 9).
"""
