"""Files and folders that people and other programs read: the permissions their umask gives.

Outputs are written in a staging file or folder beside their place and renamed
into it when whole. Staging names carry the writer's process id, so a writer
killed midway (kill -9) leaves something the next writer in that folder removes.
Staging areas made with `tempfile` are private (0700 folders, 0600 files) so that
nobody reads half of them; once whole, they get the usual permissions before they
are renamed into place, since TF Serving and colleagues often run as other users.
"""

import os
import re
import shutil
import tempfile

from tfp_vae.errors import TfpVaeError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_usual_permissions(path: str) -> None:
    """chmod `path` (a file, or a folder and everything in it) as a fresh file or folder would be made."""
    mask = current_umask()
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~mask)
        return
    for folder, _, names in os.walk(path):
        os.chmod(folder, 0o777 & ~mask)
        for name in names:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def is_new_folder(path: str) -> bool:
    return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))


def require_new_folder(path: str, option: str, error: type = TfpVaeError) -> None:
    """Refuses `path` unless it is absent or an empty folder: what a command writes never mixes with what was there."""
    if not is_new_folder(path):
        raise error(f"{path}: exists and is not an empty folder; choose another {option}")


def remove_written(path: str, existed: bool) -> None:
    """Removes what a failed command wrote into `path`, a folder that was absent or (`existed`) empty."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in os.listdir(path) if os.path.isdir(path) else ():
        remove(os.path.join(path, name))


def remove(path: str) -> None:
    """Removes a file, or a folder and everything in it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)


def staging_folder(folder: str, prefix: str) -> str:
    """A new private staging folder in `folder`, after removing those of writers that died."""
    remove_abandoned_staging(folder, prefix)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=folder)


def staging_file(folder: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new private staging file in `folder` (its handle and path), after removing those of writers that died."""
    remove_abandoned_staging(folder, prefix)
    return tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=suffix, dir=folder)


def remove_abandoned_staging(folder: str, prefix: str) -> None:
    """Removes the staging files and folders (`<prefix><pid>-...`) whose writing process is gone."""
    for name in os.listdir(folder):
        match = re.fullmatch(re.escape(prefix) + r"(\d+)-.*", name)
        if match and not process_alive(int(match[1])):
            remove(os.path.join(folder, name))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
