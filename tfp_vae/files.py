"""Files and folders that people and other programs read: the permissions their umask gives.

Staging areas made with `tempfile` are private (0700 folders, 0600 files) so that
nobody reads half of them; once whole, they get the usual permissions before they
are renamed into place, since TF Serving and colleagues often run as other users.
"""

import os

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


def require_new_folder(path: str, option: str) -> None:
    """Refuses `path` unless it is absent or an empty folder: what a command writes never mixes with what was there."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise TfpVaeError(f"{path}: exists and is not an empty folder; choose another {option}")
