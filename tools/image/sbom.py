"""What is inside the image, as an SPDX 2.3 document: the Debian packages and the Python distributions."""

from __future__ import annotations

import datetime
import email.parser
import hashlib
import json
from pathlib import Path


def debian_packages(control_text: str) -> list[dict]:
    """Packages from `dpkg-deb -f` paragraphs (Package, Version, Architecture, Source)."""
    packages = []
    for paragraph in control_text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in paragraph.splitlines() if ": " in line)
        if "Package" in fields:
            packages.append(fields)
    return sorted(packages, key=lambda p: p["Package"])


def python_distributions(site: Path) -> list[dict]:
    found = []
    for metadata in sorted(site.glob("*.dist-info/METADATA")):
        headers = email.parser.Parser().parsestr(metadata.read_text(encoding="utf-8", errors="replace"),
                                                 headersonly=True)
        found.append({"name": headers["Name"], "version": headers["Version"],
                      "license": headers.get("License-Expression") or headers.get("License") or ""})
    return found


def spdx(name: str, version: str, epoch: int, debian: list[dict], python: list[dict]) -> dict:
    def ident(kind: str, pkg: str) -> str:
        return f"SPDXRef-{kind}-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in pkg)

    packages = [{
        "SPDXID": ident("deb", p["Package"]), "name": p["Package"], "versionInfo": p["Version"],
        "downloadLocation": "NOASSERTION", "licenseConcluded": "NOASSERTION",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:deb/debian/{p['Package']}@{p['Version']}"
                                              f"?arch={p.get('Architecture', 'amd64')}"}],
    } for p in debian] + [{
        "SPDXID": ident("pypi", p["name"]), "name": p["name"], "versionInfo": p["version"],
        "downloadLocation": "NOASSERTION", "licenseConcluded": "NOASSERTION",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:pypi/{p['name'].lower()}@{p['version']}"}],
    } for p in python]
    # The namespace must be unique per document and the same for the same contents.
    contents = hashlib.sha256(json.dumps(packages, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name}-{version}", "documentNamespace": f"https://tidal.dev/spdx/{name}-{version}-{contents}",
        "creationInfo": {"created": datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
                         .strftime("%Y-%m-%dT%H:%M:%SZ"), "creators": ["Tool: tidal tools/image/build.py"]},
        "packages": packages,
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": p["SPDXID"]} for p in packages],
    }
