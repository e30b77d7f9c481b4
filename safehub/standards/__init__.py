"""Standards artefacts the hub needs at run time, shipped inside the package.

* ``cap-1.2/CAP-v1.2.xsd``: the OASIS CAP 1.2 schema, verbatim (IBM/cap @ 5f5f07c9,
  ``resources/CAP-v1.2.xsd``; "Copyright OASIS Open 2010", redistributable with its notice).
* ``nena-eido/eido-required-fields.json``: facts taken from NENA-STA-021 EIDO JSON
  (NENA911/EIDO-JSON @ 7f62055d: required properties, enums, registries, APCO alarm codes),
  written for this project; the NENA schema itself carries no licence and is not copied.

Both are byte-for-byte copies of the project's reference set (``../shared/standards``, whose
SOURCE.md files give the full provenance); ``tests/notify/test_cap.py`` checks they still match.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: The OASIS CAP 1.2 XML schema.
CAP_XSD = _HERE / "cap-1.2" / "CAP-v1.2.xsd"
#: The EIDO facts the psap_cad validator and the CAD simulator check against.
EIDO_RULES = _HERE / "nena-eido" / "eido-required-fields.json"
