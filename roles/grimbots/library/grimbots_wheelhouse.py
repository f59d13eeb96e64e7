#!/usr/bin/python
"""Describe a wheelhouse by content and pack it for transfer (runs on the controller)."""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: grimbots_wheelhouse
short_description: Content digest of a wheelhouse directory, and a tarball of it
description:
  - Lists the C(*.whl) files of a directory and computes a digest of their content.
  - The digest is built from each wheel's name and its C(RECORD) (the sha256 of every file
    inside the wheel), not from the wheel's bytes, because a rebuilt wheel of unchanged code
    differs only in its zip timestamps. The same code therefore always gives the same digest,
    and the role reinstalls the app only when the wheel set really changed.
  - With O(archive_dir), also writes C(<archive_dir>/wheelhouse-<digest>.tar) (only if absent).
options:
  path:
    description: Directory holding the wheels.
    type: path
    required: true
  archive_dir:
    description: Where to write the tarball; no tarball when omitted.
    type: path
  app_package:
    description: Distribution name of the app; its wheel must be in O(path).
    type: str
    default: grimbots
author: GrimBots infrastructure
"""

RETURN = r"""
digest:
  description: sha256 over the sorted wheel names and RECORD files.
  type: str
  returned: always
wheels:
  description: Sorted wheel file names.
  type: list
  elements: str
  returned: always
app_wheel:
  description: File name of the app's wheel.
  type: str
  returned: always
archive:
  description: Path of the tarball, when O(archive_dir) is set.
  type: str
  returned: when archive_dir is set
"""


def wheel_record(path: str) -> bytes:
    with zipfile.ZipFile(path) as wheel:
        for name in wheel.namelist():
            if name.endswith(".dist-info/RECORD") and name.count("/") == 1:
                return wheel.read(name)
    raise ValueError(f"{os.path.basename(path)} has no .dist-info/RECORD")


def normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "archive_dir": {"type": "path"},
            "app_package": {"type": "str", "default": "grimbots"},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    if not os.path.isdir(path):
        module.fail_json(msg=f"wheelhouse {path} does not exist: build it with `make wheelhouse`")
    wheels = sorted(name for name in os.listdir(path) if name.endswith(".whl"))
    app = normalise(module.params["app_package"])
    app_wheels = [name for name in wheels if normalise(name.split("-", 1)[0]) == app]
    if len(app_wheels) != 1:
        module.fail_json(
            msg=f"wheelhouse {path} must hold exactly one {app} wheel, found {app_wheels or 'none'}"
        )

    digest = hashlib.sha256()
    try:
        for name in wheels:
            digest.update(name.encode() + b"\0" + wheel_record(os.path.join(path, name)) + b"\0")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        module.fail_json(msg=f"cannot read the wheelhouse: {exc}")
    result = {
        "changed": False,
        "digest": digest.hexdigest(),
        "wheels": wheels,
        "app_wheel": app_wheels[0],
    }

    archive_dir = module.params["archive_dir"]
    if archive_dir:
        archive = os.path.join(archive_dir, f"wheelhouse-{result['digest'][:16]}.tar")
        result["archive"] = archive
        if not os.path.exists(archive):
            result["changed"] = True
            if not module.check_mode:
                os.makedirs(archive_dir, mode=0o700, exist_ok=True)
                partial = archive + ".partial"
                with tarfile.open(partial, "w") as tar:
                    for name in wheels:
                        tar.add(os.path.join(path, name), arcname=name, recursive=False)
                os.replace(partial, archive)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
