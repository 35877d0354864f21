"""llama.cpp's own convert_hf_to_gguf.py on a Hugging Face checkpoint, for benchmarks and test
fixtures. Our checkpoints' tiny random tokenizers are not in llama.cpp's table of known
pre-tokenizers, so that lookup falls back to "default" instead of stopping the conversion.

    python3 scripts/llama_convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf OUTTYPE    # f32, bf16, q8_0, ...

Importable too: `convert(llama_cpp_dir, model_dir, out, outtype)`; after the first call,
`import gguf` gives the gguf-py of that llama.cpp tree.
"""
import os
import sys

_main = None


def _converter(llama):
    global _main
    if _main is None:
        sys.path.insert(0, llama)
        sys.path.insert(1, os.path.join(llama, "gguf-py"))
        import convert_hf_to_gguf
        from conversion import base

        known = base.TextModel.get_vocab_base_pre

        def any_pre(self, tokenizer):
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                return "default"

        base.TextModel.get_vocab_base_pre = any_pre
        _main = convert_hf_to_gguf.main
    return _main


def convert(llama, model, out, outtype):
    main = _converter(os.path.abspath(llama))
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
    try:
        main()
    finally:
        sys.argv = argv


if __name__ == "__main__":
    convert(*sys.argv[1:5])
