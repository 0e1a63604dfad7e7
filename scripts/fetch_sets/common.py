"""Downloads, archive extraction and the staging of a data set folder, shared by every data set."""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

USER_AGENT = "covidseg-fetch-data/1.0 (+https://github.com)"
TIMEOUT_S = 60
BRANCHES = ("master", "main")

Fetch = Callable[[str, Path], Path]


class FetchError(RuntimeError):
    """A failure the user can act on; main() prints it without a traceback."""


class NotUpstream(FetchError):
    """Every URL tried answered 404: the file is not (or no longer) in the repository."""


def warn(message: str) -> None:
    """Print a warning to stderr so that it stands out from the progress lines."""
    print(f"WARNING: {message}", file=sys.stderr)


def archive_urls(repo: str) -> list[str]:
    """GitHub zip URLs of a repository's default branch candidates (master first, then main)."""
    return [f"https://github.com/{repo}/archive/refs/heads/{branch}.zip" for branch in BRANCHES]


def raw_urls(repo: str, path: str) -> list[str]:
    """URLs of one file of a GitHub repository on its default branch candidates (master, then main)."""
    quoted = urllib.parse.quote(path)
    return [f"https://raw.githubusercontent.com/{repo}/{branch}/{quoted}" for branch in BRANCHES]


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (via a .part file, so an interrupted run leaves no bad file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    print(f"Downloading {url}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except urllib.error.HTTPError:
        part.unlink(missing_ok=True)
        raise  # callers decide whether a 404 means "try the next branch"
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise FetchError(
            f"Could not download {url} ({reason}).\n"
            "Check the network connection (and HTTPS_PROXY if you are behind a proxy), then run again. "
            f"Or download that URL by hand, save it as {dest.name} in a folder and pass "
            "--keep-downloads FOLDER, which reuses files already there."
        ) from err
    part.replace(dest)
    return dest


def download_first(urls: Iterable[str], dest: Path, fetch: Fetch = download) -> Path:
    """Fetch the first URL that exists: a branch named master or main, whichever the repo has."""
    if dest.is_file():
        print(f"Reusing {dest}")
        return dest
    tried = []
    for url in urls:
        try:
            return fetch(url, dest)
        except urllib.error.HTTPError as err:
            tried.append(f"{url} (HTTP {err.code})")
            if err.code != 404:
                break
    error = NotUpstream if all(t.endswith("(HTTP 404)") for t in tried) else FetchError
    raise error(
        "Could not download any of: " + ", ".join(tried) + ".\n"
        "The repository may have moved or be rate-limited; open the URL in a browser, save the file as "
        f"{dest.name} in a folder and pass --keep-downloads FOLDER."
    )


def download_repo_files(repo: str, paths: Iterable[str], dest: Path, fetch: Fetch) -> dict[str, Path]:
    """Download files of a GitHub repository (``paths`` inside it) to the same paths under ``dest``,
    reusing files already there. A file upstream no longer has is warned about and left out of the
    returned path -> local file; any other failure stops."""
    found: dict[str, Path] = {}
    for path in paths:
        if ".." in Path(path).parts or Path(path).is_absolute():  # paths come from upstream metadata
            raise FetchError(f"{path!r} in the metadata of github {repo} points outside the repository.")
        try:
            found[path] = download_first(raw_urls(repo, path), dest / path, fetch)
        except NotUpstream:
            warn(f"{path} is not in github {repo} (HTTP 404); skipped.")
    return found


def extract_subfolder(archive: Path, folder_name: str, dest: Path) -> Path:
    """Extract only the members under a folder called ``folder_name`` (the archives also hold
    notebooks and other data we do not need), and return the extracted folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if f"/{folder_name}/" in f"/{m}"]
            if not members:
                raise FetchError(f"{archive} has no folder {folder_name!r}: the repository layout changed.")
            for member in members:
                zf.extract(member, dest)  # zipfile strips absolute paths and '..' itself
    except zipfile.BadZipFile as err:
        raise FetchError(f"{archive} is not a valid zip file ({err}); delete it and run again.") from err
    return find_folder(dest, folder_name)


def find_folder(root: Path, name: str) -> Path:
    """The shallowest folder called ``name`` below ``root`` (archives add a '<repo>-<branch>/' top)."""
    hits = sorted((p for p in root.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
    if not hits:
        raise FetchError(f"No folder {name!r} under {root}.")
    return hits[0]


def read_table(csv_path: Path, required: set[str], what: str) -> pd.DataFrame:
    """A metadata CSV as strings, column names stripped and lower-cased (upstream files pad some and
    changed their case over time), cells stripped; refuses a file without the ``required`` columns."""
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    missing = required - set(table.columns)
    if missing:
        raise FetchError(f"{csv_path} lacks the columns {sorted(missing)}: the {what} metadata changed.")
    return table.apply(lambda column: column.str.strip())


# ----------------------------------------------------------------------------------------------
# A data set folder: staged, then swapped in complete
# ----------------------------------------------------------------------------------------------


def check_counts(name: str, counts: dict[str, int], expected: dict[str, int]) -> None:
    """Say when the rebuilt set differs from the reference copy, since results would then differ too."""
    if counts != expected:
        warn(
            f"{name}: got {counts}, the reference copy has {expected}; the upstream repository may "
            "have changed."
        )


def prepare(out: Path, name: str, force: bool) -> Path | None:
    """Staging folder for data set ``name``, or None when it is already built and not forced."""
    target = out / name
    if (target / "metadata.csv").is_file() and not force:
        print(f"{target} already has metadata.csv; skipped (use --force to rebuild).")
        return None
    if target.exists() and any(target.iterdir()) and not force:
        raise FetchError(
            f"{target} exists without metadata.csv (an interrupted run?); pass --force to replace it."
        )
    staging = out / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def finish(staging: Path, target: Path, table: pd.DataFrame) -> None:
    """Write metadata.csv last and swap the staging folder in, so that a half-built set never
    looks complete (a present metadata.csv is what makes later runs skip the set)."""
    table.to_csv(staging / "metadata.csv", index=False)
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)
