"""Check that the float16-carried base weights and our mean-pooling encoder match the float32
sentence-transformers model (retrieval on the 1,000 held-out pairs; max embedding difference).

    PYTHONPATH=. .venv/bin/python bench/bench_model_base_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_model_quality import embed, retrieval
    from sentence_transformers import SentenceTransformer

    from models.mlm import load_base
    from models.registry import base_model_path

    cpu = torch.device("cpu")
    data = torch.load("bench/out/model_bench_data.pt", weights_only=False)
    for base in (base_model_path(), Path("bench/out/base_fp16")):
        model, tok = load_base(base)
        print(base, retrieval(model.bert, tok, data["pairs"], cpu), flush=True)
    st = SentenceTransformer(str(base_model_path()), device="cpu")
    texts = [a for a, _ in data["pairs"][:20]]
    diff = st.encode(texts, convert_to_tensor=True) - embed(model.bert, tok, texts, cpu)
    print("max |ST float32 - ours on float16 base| over 20 texts:", float(diff.abs().max()))


if __name__ == "__main__":
    main()
