"""A lab copy of a mirror module template (modules/<name>/): the folder copied, its
userconfig.xml given the lab's VIP, replicated directory and timeouts, and the
template's user variables set. Shared by the PostgreSQL and VM lab modules."""
from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree as ET


def copied_template(folder: Path, template: Path, vip: str, datadir: str,
                    ack_timeout_s: float) -> tuple[Path, ET.Element, ET.Element]:
    """Copy ``template`` to ``folder`` (replacing it) and set what every lab copy sets;
    returns (its userconfig.xml path, the parsed root, its <service>) for the caller's
    own settings, to be written with ``write_userconfig``."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(template, folder)
    path = folder / "conf" / "userconfig.xml"
    root = ET.fromstring(path.read_bytes())
    service = root.find("service")
    assert service is not None, f"{template}: no <service> in conf/userconfig.xml"
    service.set("scripts_timeout", "120s")
    service.find("vip").find(".//virtual_addr").set("addr", vip)  # type: ignore[union-attr]
    rfs = service.find("rfs")
    assert rfs is not None, f"{template}: no <rfs> in conf/userconfig.xml"
    rfs.set("ack_timeout", f"{ack_timeout_s}s")
    rfs.find("replicated").set("dir", datadir)  # type: ignore[union-attr]
    return path, root, service


def set_user_vars(service: ET.Element, values: dict[str, str]) -> None:
    """Set the <user> variables ``values``: the template's keep their place, new ones
    are added."""
    user = service.find("user")
    assert user is not None, "no <user> section in the template"
    left = dict(values)
    for var in user.findall("var"):
        if var.get("name") in left:
            var.set("value", left.pop(var.get("name")))  # type: ignore[arg-type]
    for name, value in left.items():
        ET.SubElement(user, "var", {"name": name, "value": value})


def write_userconfig(path: Path, root: ET.Element) -> None:
    path.write_bytes(b"<!DOCTYPE safe>\n" + ET.tostring(root))
