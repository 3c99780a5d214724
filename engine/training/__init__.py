"""Training data: the licensed source corpus, the byte-level BPE tokenizer, fill-in-the-middle examples.

engine.training.fim.format_fim_prompt is also used at inference time, so this package must not
import transformers or anything LSP.
"""
