"""An export on the Hugging Face Hub: `load_backbone("owner/name")` downloads it first.

A source is a hub id when it is a string, names no existing folder, and reads
as `name` or `owner/name` (letters, digits, `-`, `_`, `.`; each part starts
with a letter or digit, at most 96 characters: the hub's own rule). A `Path`
is always a folder. Only the files a loader reads are downloaded
(`allow_patterns`), into the hub's cache; `revision` (branch, tag or commit)
pins them, and with HF_HUB_OFFLINE=1 the cached snapshot is used. Every hub
failure (no such repository or revision, a gated one, no network and nothing
cached) is one `HubError` line naming the id.

huggingface_hub is imported only here and only when a hub id is loaded: the
`hub` extra of setup.cfg.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from clasp.errors import InputError

HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class HubError(InputError, ValueError):
    """A hub repository that cannot be read; the message names it."""


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` is read from the hub rather than from a folder (see the module docstring)."""
    if not isinstance(source, str) or Path(source).is_dir():
        return False
    return HUB_ID.fullmatch(source) is not None and ".." not in source and "--" not in source


def download(repo_id: str, files: Sequence[str], revision: str | None = None) -> Path:
    """The local snapshot folder of `repo_id` holding `files`, downloaded or from the cache."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise HubError(f"{repo_id}: no such folder, and reading it from the Hugging Face Hub needs huggingface_hub "
                       "(pip install 'clasp[hub]')") from None
    where = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(files)))
    except GatedRepoError:
        raise HubError(f"{where}: a gated hub repository; accept its terms on the hub and log in "
                       "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id}: no such folder, and no hub repository of that id "
                       "(or a private one: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id}: the hub repository has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{where}: not in the local hub cache, and the hub cannot be reached "
                       "(offline, or HF_HUB_OFFLINE=1)") from None
    except Exception as exc:  # noqa: BLE001 - network and HTTP errors of several libraries: one line
        raise HubError(f"{where}: the hub download failed ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:200]})") from None
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise HubError(f"{where}: the hub repository has no {missing[0]}; is it an upload of a `clasp export` folder?")
    return folder
