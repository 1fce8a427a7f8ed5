"""Where rows come from: local files, folders, globs, fsspec URLs and hub datasets.

Everything loads through ``datasets.load_dataset`` so every format and filesystem it knows
works here.  What this module adds is the error a user can act on: when a load fails it
re-reads the offending local file to name the line (malformed JSON, wrong encoding), and
after a load it checks that the columns a template needs are present in every row.

Local files load with the hub libraries offline (``honed.util.offline.local_only``): reading a file on
disk makes no network request.  A folder or glob contributes its data files only (by extension);
README, LICENSE and hidden files beside them are skipped.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from honed.data.config import DataConfig
from honed.errors import DataError
from honed.util.hashing import hash_file
from honed.util.offline import hub_endpoint, hub_offline, hub_reachable, local_only
from honed.util.paths import is_url

log = logging.getLogger("honed")

# Loader of each file extension; ".json" holds either a JSON array or JSON Lines.
LOADERS = {
    ".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".txt": "text", ".text": "text", ".arrow": "arrow",
}
FILE_LOADERS = {"json", "csv", "parquet", "text", "arrow"}
TEXT_LOADERS = {"json", "csv", "text"}
# Files that sit beside data in a folder and are never data (matched on the name before the first dot).
NOT_DATA = {"readme", "license", "licence", "notice", "changelog", "changes", "copying", "authors",
            "contributing", "citation", "manifest"}
# The fsspec filesystem package of each protocol.
FS_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
               "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "adl": "adlfs"}


def data_files(cfg: DataConfig) -> list[str]:
    """The config's data_files as a flat list (URLs and globs kept as written)."""
    files = cfg.load_dataset_config.data_files
    if files is None:
        return []
    return [files] if isinstance(files, str) else list(files)


def _not_data(name: str) -> bool:
    """README, LICENSE, ... and hidden files: never rows, whatever their extension."""
    return name.startswith(".") or name.split(".")[0].lower() in NOT_DATA


def _pick_data_files(found: list[Path], where: str, *, keep_unknown: bool) -> list[Path]:
    """The data files among ``found`` (by extension); what was skipped is logged at info level.

    ``keep_unknown``: files of an unknown extension stay when no file has a known one (a glob such
    as ``*.dat`` that the user pairs with data_name).
    """
    candidates = [q for q in found if not _not_data(q.name)]
    known = [q for q in candidates if q.suffix.lower() in LOADERS]
    picked = known if known or not keep_unknown else candidates
    skipped = [q for q in found if q not in picked]
    if skipped and picked:
        log.info("%s: ignored %s (not data files)", where, ", ".join(q.name for q in skipped[:10])
                 + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""))
    return picked


def expand_local(entry: str) -> list[Path]:
    """Data files a local path, folder or glob names, sorted (the order datasets reads them)."""
    p = Path(entry.removeprefix("file://")).expanduser()
    if p.is_dir():
        inside = sorted(q for q in p.rglob("*") if q.is_file()
                        and not any(part.startswith(".") for part in q.relative_to(p).parts[:-1]))
        found = _pick_data_files(inside, f"data folder {p}", keep_unknown=False)
        if not found:
            raise DataError(f"folder {p} has no data files ({', '.join(sorted(LOADERS))}); put files in it or "
                            "point data_files at a file")
        return found
    if glob.has_magic(str(p)):
        matched = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
        if not matched:
            raise DataError(f"no file matches '{entry}'; fix the glob in data_files")
        found = _pick_data_files(matched, f"data_files '{entry}'", keep_unknown=True)
        if not found:
            raise DataError(f"'{entry}' matches only {', '.join(q.name for q in matched[:3])}, which are not data "
                            "files; fix the glob in data_files")
        return found
    if not p.is_file():
        raise DataError(f"data file not found: {p}; fix data_files or create the file")
    return [p]


def loader_name(cfg: DataConfig, files: list[str]) -> str:
    """The datasets builder to use: data_name when it is one, else the files' extension."""
    name = cfg.load_dataset_config.data_name
    if name in FILE_LOADERS:
        return name
    by_loader: dict[str, str] = {}
    for f in files:
        found = LOADERS.get(Path(f.split("?")[0]).suffix.lower())
        if found:
            by_loader.setdefault(found, Path(f.split("?")[0]).name)
    if len(by_loader) == 1:
        return next(iter(by_loader))
    if len(by_loader) > 1:
        mixed = ", ".join(f"{k} ({v})" for k, v in sorted(by_loader.items()))
        raise DataError(f"data config '{cfg.name}' mixes formats: {mixed}; keep one format per data config "
                        "(a folder may hold only one kind of data file)")
    listed = ", ".join(files[:3])
    raise DataError(f"cannot tell the format of {listed}; set load_dataset_config.data_name to one of "
                    f"{sorted(FILE_LOADERS)}")


def is_hub(cfg: DataConfig) -> bool:
    """True when rows come from a hub dataset id (or a dataset folder) rather than data files."""
    lc = cfg.load_dataset_config
    return (not data_files(cfg) and bool(lc.data_name) and lc.data_name not in FILE_LOADERS
            and not cfg.user_component("load_dataset"))


def resolved_files(cfg: DataConfig) -> list[str]:
    """Local files expanded to absolute paths; URLs kept as strings."""
    out: list[str] = []
    for entry in data_files(cfg):
        if is_url(entry):
            out.append(entry)
        else:
            out.extend(str(p) for p in expand_local(entry))
    return out


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars or error logs from datasets: it logs its own error before raising, and ours
    is the one the user should read."""
    import datasets
    from datasets.utils import are_progress_bars_disabled

    level = datasets.logging.get_verbosity()
    bars_off = are_progress_bars_disabled()
    datasets.logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not bars_off:
            datasets.enable_progress_bars()


def load_rows(cfg: DataConfig, *, cache_dir: Path | None = None, tokenizer: Any = None) -> Any:
    """Rows of ``cfg`` as a ``datasets.Dataset``: loaded (by honed or the user's load_dataset function),
    filtered by col_filters and passed through the user's pre_process_data function when there is one;
    no formatting, no tokenizing.  ``tokenizer`` fills in a user pre_process function's model_name.

    Raises DataError naming the file, the line and the fix for a missing, empty, malformed
    or wrongly encoded file, or a hub dataset that is not reachable.
    """
    from honed.data.components import to_dataset

    what = f"data config '{cfg.name}': " + ("pre_process_data_config.type" if cfg.user_component("pre_process_data")
                                            else "load_dataset_config.type")
    return to_dataset(prepared(cfg, cache_dir=cache_dir, tokenizer=tokenizer), what)


def prepared(cfg: DataConfig, *, cache_dir: Path | None = None, tokenizer: Any = None) -> Any:
    """What the load and pre-process components produce, before it becomes a ``datasets.Dataset``
    (a user's pre_process_data may return a torch Dataset, which a user dataloader then batches)."""
    from honed.data.components import filter_rows, to_dataset, user_load, user_pre_process

    if cfg.is_dummy:
        raise DataError(f"data config '{cfg.name}' is {cfg.type}: made-up inputs for latency/throughput metrics, "
                        "with no rows; use a data config with data_files or data_name here")
    if cfg.user_component("load_dataset"):
        rows = user_load(cfg)
        if cfg.load_dataset_config.col_filters:
            rows = filter_rows(cfg, to_dataset(rows, f"data config '{cfg.name}': load_dataset_config.type"))
    else:
        rows = filter_rows(cfg, _load_source(cfg, cache_dir))
    if cfg.user_component("pre_process_data"):
        rows = user_pre_process(cfg, rows, tokenizer)
    return rows


def _load_source(cfg: DataConfig, cache_dir: Path | None) -> Any:
    """Rows of data_files or the hub dataset, as datasets loads them."""
    import datasets
    import pyarrow as pa

    lc = cfg.load_dataset_config
    hf_cache = str(cache_dir / "raw") if cache_dir else None
    if is_hub(cfg):
        return _load_hub(cfg, hf_cache)
    if not data_files(cfg):
        raise DataError(f"data config '{cfg.name}' names no source; set load_dataset_config.data_files "
                        "(a file, folder, glob or URL) or data_name (a hub dataset id)")
    entries = resolved_files(cfg)
    urls = [f for f in entries if is_url(f)]
    shown: dict[str, str] = {}
    if urls:  # fetched with fsspec so hub offline mode (HF_HUB_OFFLINE) does not block s3:// or https://
        shown = _fetch(urls, lc.storage_options or {}, cache_dir)
    files = [f for f in entries if not is_url(f)] + list(shown)
    for f in files:
        if os.path.getsize(f) == 0:
            raise DataError(f"data file {shown.get(f, f)} is empty; put rows in it or remove it from data_files")
    builder = loader_name(cfg, files)
    if builder in TEXT_LOADERS:
        for f in files:  # pyarrow reads invalid UTF-8 without complaint and fails later, far from the file
            _check_utf8(f, shown.get(f, f))
    kwargs: dict[str, Any] = {}
    if builder == "csv" and all(f.endswith(".tsv") for f in files):
        kwargs["sep"] = "\t"
    names = ", ".join(shown.get(f, f) for f in files[:3])
    try:
        with quiet_datasets(), local_only():  # every file is on disk now: no hub request
            ds = datasets.load_dataset(builder, data_files=files, split=lc.split, cache_dir=hf_cache, **kwargs)
    except FileNotFoundError as e:
        raise DataError(f"data file not found: {e}; fix data_files") from e
    except UnicodeDecodeError as e:
        raise _renamed(_diagnose(files, builder), shown) or DataError(
            f"{files[0]}: not UTF-8 ({e}); re-save it as UTF-8") from e
    except (datasets.exceptions.DatasetsError, pa.ArrowException, StopIteration, ValueError) as e:
        cause = e.__cause__ or e.__context__ or e
        found = _renamed(_diagnose(files, builder), shown)
        if found:
            raise found from e
        if "corresponds to no data" in str(cause) or "corresponds to no data" in str(e):
            raise DataError(f"{names} holds no rows; put rows in it or remove it from data_files") from e
        raise DataError(f"cannot read {names} as {builder}: {type(cause).__name__}: "
                        f"{str(cause)[:300] or 'no rows'}; fix the file or set data_name") from e
    if len(ds) == 0:
        raise DataError(f"{names} holds no rows; put rows in it or remove it from data_files")
    return ds


def _utf16(head: bytes) -> str | None:
    """'UTF-16'/'UTF-32' when ``head`` (a file's first bytes) is text in that encoding, else None.

    By the byte-order mark, or, without one, by the zero bytes every ASCII character carries (zero
    bytes are valid UTF-8, so a UTF-8 check alone lets such a file through as garbage).
    """
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    sample = head[:4096]
    if len(sample) >= 4 and sample.count(0) * 3 >= len(sample):
        return "UTF-16"
    return None


def _utf16_error(shown: str, kind: str) -> DataError:
    return DataError(f"{shown}: {kind} text, not UTF-8; re-save the file as UTF-8, e.g. "
                     f"`iconv -f {kind.lower()} -t utf-8`")


def _check_utf8(path: str, shown: str) -> None:
    """DataError naming the line of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with open(path, "rb") as fh:
        kind = _utf16(fh.read(4096))
        if kind:
            raise _utf16_error(shown, kind)
        fh.seek(0)
        while chunk := fh.read(1 << 22):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line = lines + chunk[: max(e.start, 0)].count(b"\n") + 1
                raise DataError(f"{shown}, line {line}: not UTF-8 (byte 0x{chunk[e.start]:02x}); re-save the file "
                                "as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{shown}: ends inside a UTF-8 character; re-save the file as UTF-8") from None


def _renamed(error: DataError | None, shown: dict[str, str]) -> DataError | None:
    """The same error naming URLs instead of their downloaded copies."""
    if error is None:
        return None
    text = str(error)
    for local, url in shown.items():
        text = text.replace(local, url)
    return DataError(text)


def _fetch(urls: list[str], storage: dict[str, Any], cache_dir: Path | None) -> dict[str, str]:
    """Copy the files URLs name (globs and folders expanded) to local disk; {local copy: URL}.

    Credentials come from fsspec's usual sources (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
    AZURE_STORAGE_*, ~/.aws ...) unless storage_options gives them.
    """
    import fsspec

    root = (cache_dir / "downloads") if cache_dir else Path(tempfile.gettempdir()) / "honed-downloads"
    out: dict[str, str] = {}
    for url in urls:
        try:
            fs, path = fsspec.core.url_to_fs(url, **storage)
            if glob.has_magic(path):
                paths = sorted(fs.glob(path))
            elif fs.isdir(path):
                paths = sorted(p for p in fs.find(path) if Path(p).suffix.lower() in LOADERS)
            else:
                paths = [path]
            if not paths:
                raise DataError(f"no file matches '{url}'; fix data_files")
            dest = root / hashlib.sha256(url.encode()).hexdigest()[:16]
            dest.mkdir(parents=True, exist_ok=True)
            for p in paths:
                local = dest / Path(p).name
                fs.get_file(p, str(local))
                out[str(local)] = fs.unstrip_protocol(p)
        except (FileNotFoundError, PermissionError) as e:
            raise DataError(f"cannot read {url}: {type(e).__name__}: {e}; check the URL and the credentials "
                            "in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)") from e
        except (ImportError, ValueError) as e:  # no filesystem for the protocol (aiohttp, s3fs, gcsfs, adlfs missing)
            protocol = url.split("://", 1)[0].lower()
            package = FS_PACKAGES.get(protocol)
            fix = f"pip install {package}" if package else "install the fsspec filesystem for it"
            raise DataError(f"cannot read {url}: {str(e)[:200]}; {fix}") from e
        except OSError as e:
            raise DataError(f"cannot read {url}: {e}; check the URL, network and credentials") from e
    return out


def _load_hub(cfg: DataConfig, hf_cache: str | None) -> Any:
    import datasets
    from huggingface_hub.errors import HfHubHTTPError

    lc = cfg.load_dataset_config
    if lc.trust_remote_code:
        log.info("datasets %s runs no loading scripts; trust_remote_code is ignored", datasets.__version__)
    missing = (datasets.exceptions.DatasetNotFoundError, FileNotFoundError, ConnectionError, HfHubHTTPError)

    def load() -> Any:
        with quiet_datasets():
            return datasets.load_dataset(lc.data_name, lc.subset, split=lc.split, revision=lc.revision,
                                         cache_dir=hf_cache)

    try:
        # A dataset folder on disk, or a hub dataset already in the cache: no network request.
        local = Path(str(lc.data_name)).expanduser().exists()
        if local or hub_offline():
            with local_only():
                return load()
        try:
            with local_only():
                return load()
        except missing:
            pass
        if not hub_reachable():  # fail now, not after the hub client's timeouts and retries
            raise DataError(f"hub dataset '{lc.data_name}' is not in the local cache and the hub ({hub_endpoint()}) "
                            "does not answer; connect to the network or download it once while online")
        return load()
    except missing as e:
        offline = " (HF_HUB_OFFLINE is set and it is not in the cache)" if hub_offline() else ""
        raise DataError(f"hub dataset '{lc.data_name}' could not be loaded{offline}: {str(e)[:200]}; "
                        "check the id, or download it once while online") from e
    except ValueError as e:  # unknown split or subset
        raise DataError(f"hub dataset '{lc.data_name}': {str(e)[:300]}; fix split/subset") from e


def _diagnose(files: list[str], builder: str) -> DataError | None:
    """Re-read local files in Python to find the first bad byte or line; None when all look fine."""
    for f in files:
        if builder in ("parquet", "arrow"):
            found = _check_binary(f, builder)
            if found:
                return found
            continue
        raw = Path(f).read_bytes()
        kind = _utf16(raw[:4096])
        if kind:
            return _utf16_error(f, kind)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            return DataError(f"{f}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}); re-save the file as "
                             "UTF-8, e.g. `iconv -f latin1 -t utf-8`")
        if builder != "json":
            continue
        if not text.strip():
            return DataError(f"data file {f} holds no rows (only blank lines); put rows in it or remove it "
                             "from data_files")
        if text.lstrip().startswith("["):
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                return DataError(f"{f}, line {e.lineno}: malformed JSON ({e.msg}); fix that line")
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                return DataError(f"{f}, line {number}: malformed JSON ({e.msg}, column {e.colno}); fix that line "
                                 "(each line must be one JSON object)")
            if not isinstance(value, dict):
                return DataError(f"{f}, line {number}: expected a JSON object, got {type(value).__name__}; "
                                 "write one object per line")
    return None


def _check_binary(path: str, builder: str) -> DataError | None:
    """DataError for a Parquet/Arrow file pyarrow cannot open (truncated, corrupt, another format) or
    that holds no rows; None when it looks fine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if builder == "parquet":
            rows = pq.ParquetFile(path).metadata.num_rows
        else:
            with pa.memory_map(path) as source:
                try:
                    rows = pa.ipc.open_stream(source).read_all().num_rows
                except pa.ArrowInvalid:
                    source.seek(0)
                    rows = pa.ipc.open_file(source).read_all().num_rows
    except (pa.ArrowException, OSError) as e:
        what = "Parquet" if builder == "parquet" else "Arrow"
        said = str(e).split(". ")[0][:150]
        return DataError(f"{path}: not a valid {what} file (truncated?): {said}; write the file again or fix "
                         "data_files")
    if rows == 0:
        return DataError(f"{path} holds no rows; put rows in it or remove it from data_files")
    return None


def locate_row(cfg: DataConfig, index: int) -> str:
    """'file, line N' of the row at ``index`` for local line-based files; else 'row N'."""
    if is_hub(cfg) or cfg.user_component("load_dataset") or cfg.user_component("pre_process_data"):
        return f"row {index}"
    if cfg.load_dataset_config.col_filters:
        return f"row {index} of those col_filters kept"
    try:
        files = resolved_files(cfg)
    except DataError:
        return f"row {index}"
    if any(is_url(f) for f in files):
        return f"row {index}"
    remaining = index
    for f in files:
        suffix = Path(f).suffix.lower()
        if suffix == ".parquet" or suffix == ".arrow":
            return f"row {index}"
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if text.lstrip().startswith("["):
            return f"row {index}"
        lines = text.splitlines()
        header = 1 if LOADERS.get(suffix) == "csv" else 0
        numbered = [n for n, line in enumerate(lines[header:], 1 + header) if line.strip()]
        if remaining < len(numbered):
            return f"{f}, line {numbered[remaining]}"
        remaining -= len(numbered)
    return f"row {index}"


def drop_raw_cache(ds: Any, cache_dir: Path | None) -> None:
    """Remove the arrow files datasets wrote for ``ds`` when they live in our own cache folder.

    Called when rows turn out to be unusable, so nothing from a failed load stays cached.
    """
    if cache_dir is None:
        return
    root = (cache_dir / "raw").resolve()
    for entry in getattr(ds, "cache_files", []):
        folder = Path(entry["filename"]).resolve().parent
        if root in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)


def source_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """Identity of the rows: file bytes (not paths or mtimes), a hub id+revision, a URL's string."""
    lc = cfg.load_dataset_config
    if is_hub(cfg):
        return {"hub": lc.data_name, "subset": lc.subset, "revision": lc.revision or _cached_revision(lc.data_name)}
    parts: list[str] = []
    for entry in data_files(cfg):
        if is_url(entry):
            parts.append("url:" + entry)
            continue
        files = expand_local(entry)
        base = Path(entry).expanduser() if Path(entry).is_dir() else None
        for f in files:
            name = str(f.relative_to(base)) if base else f.suffix
            parts.append(f"{name}:{hash_file(f)}")
    return {"files": parts}


def _cached_revision(repo_id: str | None) -> str | None:
    """Commit of a hub dataset already in the local hub cache (no network), else None."""
    if not repo_id or Path(repo_id).exists():
        return _folder_digest(Path(repo_id)) if repo_id and Path(repo_id).is_dir() else None
    from huggingface_hub.constants import HF_HUB_CACHE

    ref = Path(HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and ".cache" not in q.parts):
        h.update(str(f.relative_to(folder)).encode() + hash_file(f).encode())
    return h.hexdigest()
