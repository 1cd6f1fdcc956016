"""Stores at a URL: a real HTTP server on the loopback address (and fsspec's memory://) serves a tiny store;
verify, inspect and pre-training read it through the local cache and give what the local store gives; a server
that dies mid-run is one line naming the URL, leaves the cache sound, and the run resumes once it is back; bytes
that do not match the manifest are refused naming the shard; the cache stays within --cache-size."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.store import Manifest, ShardStore, Vocabulary
from clasp.store import fetch as fetch_module
from clasp.store.cache_config import CacheConfig
from tests.conftest import TINY_RUN, one_error_line, read_metrics, write_store

SHARD_ROWS = [4, 4, 4, 4]
TINY = {**TINY_RUN, "local_crops": 1, "num_workers": 0, "save_every": 2, "steps": 8}  # 2 epochs of 4 batches


class StoreServer:
    """A threaded http.server over `directory` that counts GETs per file name and can die after N shard GETs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.gets: Counter[str] = Counter()
        self.die_after: int | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        self.down = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, folder: str = "shards") -> str:
        return f"http://127.0.0.1:{self.port}/{folder}"

    def shard_gets(self) -> int:
        return sum(n for name, n in self.gets.items() if name.endswith(".h5"))

    def _handler(self):
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(server.directory), **kwargs)

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if server.down:  # dying: hang up without an answer
                    self.close_connection = True
                    return
                server.gets[self.path.rsplit("/", 1)[-1]] += 1
                super().do_GET()
                if server.die_after is not None and server.shard_gets() >= server.die_after:
                    server.down = True
                    threading.Thread(target=server.stop).start()

        return Handler


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same retries with short waits (the real ones wait 1, 2 and 4 s)."""
    monkeypatch.setattr(fetch_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served folder: `shards/`, a store of four 4-row shards."""
    root = tmp_path_factory.mktemp("served")
    write_store(root / "shards", Vocabulary.default(), SHARD_ROWS, grid=(8, 4), hw=(64, 32))
    return root


@pytest.fixture
def server(served: Path):
    server = StoreServer(served)
    yield server
    if not server.down:
        server.stop()


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def cache_is_sound(cache: Path, manifest: Manifest) -> list[str]:
    """Names of the cached shards; asserts each one matches its manifest entry byte for byte."""
    entries = {e.file: e for e in manifest.shards}
    names = []
    for path in cache.glob("*/*.h5"):
        entry = entries[path.name]
        assert path.stat().st_size == entry.bytes and hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
        names.append(path.name)
    return sorted(names)


def cached_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.glob("*/*.h5"))


def test_verify_and_inspect_by_url_equal_the_local_results(server: StoreServer, served: Path, tmp_path: Path) -> None:
    local, url, cache = served / "shards", server.url(), tmp_path / "cache"
    result = cli("verify", url, "--cache-dir", str(cache))
    assert result.exit_code == 0 and result.output == f"ok: 4 shards, 16 rows in {url}\n", result.output
    assert cli("verify", str(local)).output == f"ok: 4 shards, 16 rows in {local}\n"
    remote = json.loads(cli("inspect", url, "--json", "--cache-dir", str(cache)).output)
    here = json.loads(cli("inspect", str(local), "--json").output)
    assert remote.pop("root") == url and here.pop("root") == str(local)
    assert remote == here and remote["images"] == 16
    assert cache_is_sound(cache, Manifest.load(local)) == [f"shard-00000{i}.h5" for i in range(4)]
    assert server.gets["manifest.json"] == 2 and server.shard_gets() == 4  # inspect found every shard cached


def pretrain(shards: str, out: Path, *extra: str):
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps(TINY))
    return cli("pretrain", "--shards", shards, "--out", str(out), "--config", str(config), *extra)


def losses(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(out) if "loss" in row}


@pytest.fixture(scope="module")
def local_losses(served: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("local") / "run"
    result = pretrain(str(served / "shards"), out)
    assert result.exit_code == 0, result.output
    return losses(out)


@pytest.mark.usefixtures("one_torch_thread")
def test_pretrain_from_a_url_gives_the_local_losses_within_the_cache_bound(
        server: StoreServer, served: Path, tmp_path: Path, local_losses: dict[int, float]) -> None:
    cache, shard = tmp_path / "cache", max(e.bytes for e in Manifest.load(served / "shards").shards)
    result = pretrain(server.url(), tmp_path / "run", "--cache-dir", str(cache), f"--cache-size={2 * shard}")
    assert result.exit_code == 0, result.output
    got = losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 9)) and got == pytest.approx(local_losses, abs=1e-6)
    assert server.shard_gets() > 4  # a cache of two shards: the second epoch fetched again what was evicted
    assert cached_bytes(cache) <= 2 * shard and len(cache_is_sound(cache, Manifest.load(served / "shards"))) == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_a_server_that_dies_mid_run_is_one_line_and_the_run_resumes_once_it_is_back(
        server: StoreServer, served: Path, tmp_path: Path, local_losses: dict[int, float]) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    manifest = Manifest.load(served / "shards")
    size = f"--cache-size={2 * max(e.bytes for e in manifest.shards)}"
    server.die_after = 5  # the first shard of the second epoch is served, then the server is gone
    result = pretrain(server.url(), out, "--cache-dir", str(cache), size)
    line = one_error_line(result, 1)
    assert line.startswith(f"error: {server.url()}/shard-0000") and "fetch failed 4 times" in line, line
    assert line.endswith("continue with --resume"), line
    cache_is_sound(cache, manifest)
    assert not list(cache.glob("*/*.tmp")) and not list(cache.glob("*/.fetch/*.tmp"))
    done = max(losses(out))
    assert 4 <= done < 8 and (out / "checkpoints").is_dir()

    server.die_after = None
    server.start()  # the same address again
    result = pretrain(server.url(), out, "--cache-dir", str(cache), size, "--resume")
    assert result.exit_code == 0, result.output
    assert losses(out) == pytest.approx(local_losses, abs=1e-6)


def tampered_copy(served: Path, tmp_path: Path, shard: str) -> Path:
    """A copy of the served folder whose `shard` has one byte flipped (same size)."""
    copy = tmp_path / "served"
    shutil.copytree(served, copy)
    path = copy / "shards" / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return copy


def test_a_shard_whose_served_bytes_differ_is_fetched_twice_then_refused_naming_it(
        served: Path, tmp_path: Path) -> None:
    copy = tampered_copy(served, tmp_path, "shard-000002.h5")
    server = StoreServer(copy)
    try:
        cache = tmp_path / "cache"
        result = cli("verify", server.url(), "--cache-dir", str(cache))
        assert result.exit_code == 1
        bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
        assert bad == [f"BAD {server.url()}/shard-000002.h5: served bytes: sha256 mismatch (file "
                       f"{hashlib.sha256((copy / 'shards' / 'shard-000002.h5').read_bytes()).hexdigest()[:12]}…, "
                       f"manifest {Manifest.load(served / 'shards').shards[2].sha256[:12]}…); fetched 2 times, the "
                       "file on the server is not the one its manifest lists"], result.output
        assert server.gets["shard-000002.h5"] == 2
        assert cache_is_sound(cache, Manifest.load(served / "shards")) == ["shard-000000.h5", "shard-000001.h5",
                                                                           "shard-000003.h5"]
        line = one_error_line(cli("inspect", server.url(), "--cache-dir", str(cache)), 2)
        assert line.startswith(f"error: {server.url()}/shard-000002.h5: served bytes: sha256 mismatch"), line
    finally:
        server.stop()


def test_memory_urls_work_and_evict_the_least_recently_used_shard_not_in_use(served: Path, tmp_path: Path) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in (served / "shards").iterdir():
        memory.pipe_file(f"/clasp-test/shards/{path.name}", path.read_bytes())
    url, cache = "memory://clasp-test/shards", tmp_path / "cache"
    try:
        assert cli("verify", url, "--cache-dir", str(cache)).output == f"ok: 4 shards, 16 rows in {url}\n"
        shard = max(e.bytes for e in Manifest.load(served / "shards").shards)
        store = ShardStore.open(url, cache=CacheConfig(str(cache), str(2 * shard)))
        first = store.hold(store.shards[0])  # kept in use while the others come and go
        for entry in store.shards[1:]:
            store.hold(entry).release()
            assert cached_bytes(cache) <= 2 * shard
        assert cache_is_sound(cache, store.manifest) == ["shard-000000.h5", "shard-000003.h5"]
        first.release()
        with store.hold(store.shards[1]):  # now the least recently used is shard 0
            assert cache_is_sound(cache, store.manifest) == ["shard-000001.h5", "shard-000003.h5"]
    finally:
        memory.rm("/clasp-test", recursive=True)


def _hold_every_shard(url: str, cache: str) -> None:
    store = ShardStore.open(url, cache=CacheConfig(cache))
    for entry in store.shards:
        store.hold(entry).release()


def test_concurrent_fetchers_fetch_each_shard_once_and_agree(server: StoreServer, served: Path,
                                                             tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_hold_every_shard, args=(server.url(), cache)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert {name: n for name, n in server.gets.items() if name.endswith(".h5")} == \
        {f"shard-00000{i}.h5": 1 for i in range(4)}
    assert len(cache_is_sound(Path(cache), Manifest.load(served / "shards"))) == 4


def test_a_url_nobody_answers_or_no_backend_reads_is_one_line(tmp_path: Path) -> None:
    server = StoreServer(tmp_path)
    server.stop()  # nothing listens on its port now
    url = server.url()
    line = one_error_line(cli("verify", url, "--cache-dir", str(tmp_path / "cache")), 1)
    assert line.startswith(f"error: {url}/manifest.json: fetch failed 4 times, last: "), line
    try:
        import s3fs  # noqa: F401
    except ImportError:
        line = one_error_line(cli("inspect", "s3://bucket/shards", "--cache-dir", str(tmp_path / "cache")), 2)
        assert line == "error: s3://bucket/shards: no backend for s3:// is installed; pip install 'clasp[s3]'"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_pretrain_from_a_url_with_two_workers_gives_the_local_losses(server: StoreServer, served: Path,
                                                                    tmp_path: Path) -> None:
    """Two DataLoader workers fetch on demand into a cache of three shards, evicting what neither holds."""
    shard = max(e.bytes for e in Manifest.load(served / "shards").shards)
    local = pretrain(str(served / "shards"), tmp_path / "local", "--num-workers=2")
    assert local.exit_code == 0, local.output
    remote = pretrain(server.url(), tmp_path / "url", "--num-workers=2", "--cache-dir", str(tmp_path / "cache"),
                      f"--cache-size={3 * shard}")
    assert remote.exit_code == 0, remote.output
    assert losses(tmp_path / "url") == pytest.approx(losses(tmp_path / "local"), abs=1e-6)
    assert cached_bytes(tmp_path / "cache") <= 3 * shard and server.shard_gets() > 4
