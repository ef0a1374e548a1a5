"""Machine-readable "do not train" reservations written into finished image files, and read back.

The perturbation is the technical layer; this is the legal one. Crawlers and dataset builders can
read three standard opt-outs, all written here after the pixels are final (decoded pixels are
unchanged, so the budget check holds bit for bit):

- XMP `plus:DataMining` (IPTC Photo Metadata / PLUS "Data Mining" property) with one of the PLUS
  "prohibited" values, plus the IPTC rights fields the user gives: creator (`dc:creator`), copyright
  notice (`dc:rights`, `xmpRights:Marked`), contact (`Iptc4xmpCore:CreatorContactInfo`).
- XMP `tdm:reservation` = 1 and optionally `tdm:policy` (W3C TDMRep, the EU DSM art. 4(3) reservation).
- Optionally a signed C2PA manifest with the `c2pa.training-mining` assertion (every use notAllowed)
  and a `c2pa.actions` entry for what this tool did, made with the official c2pa-python bindings.

XMP is written with pyexiv2 (exiv2, bundled in the wheel): it edits PNG, JPEG and WebP in memory,
keeps the other chunks/segments (ICC profile, EXIF, this project's provenance) and knows the IPTC,
PLUS and Dublin Core schemas. exiv2 writes a JPEG comment back with a trailing NUL, which
`images.read_provenance` tolerates.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import __version__
from .errors import InputFileError, SettingsError

PLUS_VOCAB = "http://ns.useplus.org/ldf/vocab/"
#: --data-mining choice -> the PLUS Data Mining value written (all of them reserve rights)
DATA_MINING_VALUES = {
    "prohibited": "DMI-PROHIBITED",
    "prohibited-ai-training": "DMI-PROHIBITED-AIMLTRAINING",
    "prohibited-genai-training": "DMI-PROHIBITED-GENAIMLTRAINING",
    "prohibited-except-search": "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
}
TDM_NAMESPACE = "http://www.w3.org/ns/tdmrep/"
C2PA_ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
TRAINING_MINING_LABEL = "c2pa.training-mining"
TRAINING_MINING_USES = ("c2pa.ai_generative_training", "c2pa.ai_inference", "c2pa.ai_training", "c2pa.data_mining")
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
#: sources that can be a C2PA parent ingredient, by suffix
INGREDIENT_MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                         ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif"}  # fmt: skip
_CONTACT_EMAIL = "Xmp.iptc.CreatorContactInfo/Iptc4xmpCore:CiEmailWork"
_CONTACT_URL = "Xmp.iptc.CreatorContactInfo/Iptc4xmpCore:CiUrlWork"


@cache
def _exiv2():
    """pyexiv2 with the TDMRep namespace registered (exiv2 knows dc, xmpRights, Iptc4xmpCore and plus)."""
    import pyexiv2

    pyexiv2.registerNs(TDM_NAMESPACE, "tdm")
    return pyexiv2


def _c2pa():
    try:
        import c2pa
    except ImportError:
        raise SettingsError("C2PA signing needs the c2pa-python package: pip install 'unlearnable[c2pa]'") from None
    return c2pa


@dataclass(frozen=True)
class OptOut:
    """What to write: the PLUS value, TDMRep policy, IPTC rights fields and an optional C2PA signer."""

    data_mining: str = "prohibited"
    tdm_policy: str = ""
    creator: str = ""
    copyright: str = ""
    contact: str = ""
    c2pa_cert: str = ""
    c2pa_key: str = ""
    c2pa_alg: str = "es256"

    def __post_init__(self) -> None:
        if self.data_mining not in DATA_MINING_VALUES:
            raise SettingsError(f"unknown data-mining value {self.data_mining!r}; choose one of {', '.join(DATA_MINING_VALUES)}")
        if bool(self.c2pa_cert) != bool(self.c2pa_key):
            raise SettingsError("C2PA signing needs both a certificate chain (--c2pa-cert) and its private key (--c2pa-key)")
        if self.c2pa_alg not in C2PA_ALGORITHMS:
            raise SettingsError(f"unknown C2PA signing algorithm {self.c2pa_alg!r}; choose one of {', '.join(C2PA_ALGORITHMS)}")
        if self.tdm_policy and not self.tdm_policy.startswith(("https://", "http://")):
            raise SettingsError(f"the TDM policy must be an http(s) URL, got {self.tdm_policy!r}")

    @property
    def signs(self) -> bool:
        return bool(self.c2pa_cert)

    def xmp(self) -> dict:
        """The XMP properties, as pyexiv2 keys."""
        fields: dict = {"Xmp.plus.DataMining": PLUS_VOCAB + DATA_MINING_VALUES[self.data_mining], "Xmp.tdm.reservation": "1"}
        if self.tdm_policy:
            fields["Xmp.tdm.policy"] = self.tdm_policy
        if self.creator:
            fields["Xmp.dc.creator"] = [self.creator]
        if self.copyright:
            fields["Xmp.dc.rights"] = {'lang="x-default"': self.copyright}
            fields["Xmp.xmpRights.Marked"] = "True"
        if self.contact:
            fields[_CONTACT_EMAIL if "@" in self.contact and "://" not in self.contact else _CONTACT_URL] = self.contact
        return fields

    def describe(self) -> dict:
        """What is written, for summaries, reports and the resume fingerprint (no key material)."""
        record = {"xmp_data_mining": PLUS_VOCAB + DATA_MINING_VALUES[self.data_mining], "tdm_reservation": 1}
        for name in ("tdm_policy", "creator", "copyright", "contact"):
            if getattr(self, name):
                record[name] = getattr(self, name)
        if self.signs:
            record["c2pa"] = {"assertion": TRAINING_MINING_LABEL, "certificate": str(self.c2pa_cert), "alg": self.c2pa_alg}
        return record

    def check(self) -> None:
        """Fail before any work if the C2PA certificate chain and key cannot sign (a one-pixel trial)."""
        if self.signs:
            from PIL import Image

            buffer = io.BytesIO()
            Image.new("RGB", (1, 1)).save(buffer, "PNG")
            _sign(buffer.getvalue(), "image/png", self, METADATA_ACTION, None)

    def _signer(self):
        c2pa = _c2pa()
        pem = {}
        for name, what in (("c2pa_cert", "C2PA certificate chain"), ("c2pa_key", "C2PA private key")):
            path = Path(getattr(self, name))
            try:
                pem[name] = path.read_bytes()
            except OSError as exc:
                raise InputFileError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
        try:
            return c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.c2pa_alg.encode(), pem["c2pa_cert"], pem["c2pa_key"], None))
        except c2pa.C2paError as exc:
            raise SettingsError(f"{self.c2pa_cert} / {self.c2pa_key}: not a usable {self.c2pa_alg} certificate chain and key ({exc})") from None


def optout_line(record: dict | None) -> str:
    """One line saying which opt-out `OptOut.describe()` recorded (None: none was written)."""
    if not record:
        return "opt-out: none written (a machine-readable training reservation needs --optout / the opt-out switch)"
    parts = [f"XMP plus:DataMining={record['xmp_data_mining'].removeprefix(PLUS_VOCAB)}", "tdm:reservation=1"]
    parts += [f"{name}={record[name]!r}" for name in ("tdm_policy", "creator", "copyright", "contact") if name in record]
    if "c2pa" in record:
        parts.append(f"C2PA {TRAINING_MINING_LABEL} (all notAllowed) signed with {record['c2pa']['certificate']}")
    return "opt-out written: " + ", ".join(parts)


def protection_action(metadata: dict) -> dict:
    """The c2pa.actions entry for a protected image, from the provenance record `encode_image` writes."""
    return {
        "action": "c2pa.edited",
        "description": f"perturbed against diffusion-model training ({metadata['method']}, L-inf budget {metadata['budget']}/255)",
        "parameters": {key: metadata[key] for key in ("method", "budget", "steps", "model") if key in metadata},
    }


#: the action for files whose pixels this tool did not change (and for marked datasets, where
#: naming the template would give the mark away)
METADATA_ACTION = {"action": "c2pa.edited.metadata", "description": "training and data-mining reservation added"}


def apply_optout(data: bytes, fmt: str, optout: OptOut, *, action: dict = METADATA_ACTION, source: Path | None = None) -> bytes:
    """`data` (an encoded PNG, JPEG or WebP) with the XMP opt-out and, if configured, a signed C2PA manifest.

    Only metadata changes: the decoded pixels are identical. C2PA is added last because its hard
    binding covers every other byte. `source`, the original the image was made from, becomes the
    manifest's parent ingredient when C2PA can read its format.
    """
    from .images import OUTPUT_FORMATS  # images imports torch: not at module level (`--help` stays fast)

    pil_format = OUTPUT_FORMATS[fmt.lower()]
    pyexiv2 = _exiv2()
    with pyexiv2.ImageData(data) as image:
        image.modify_xmp(optout.xmp())
        data = image.get_bytes()
    if optout.signs:
        data = _sign(data, MIME_TYPES[pil_format], optout, action, source)
    return data


def _sign(data: bytes, mime: str, optout: OptOut, action: dict, source: Path | None) -> bytes:
    c2pa = _c2pa()
    manifest = {
        "claim_generator_info": [{"name": "unlearnable", "version": __version__}],
        "assertions": [
            {"label": TRAINING_MINING_LABEL, "data": {"entries": {use: {"use": "notAllowed"} for use in TRAINING_MINING_USES}}},
            {"label": "c2pa.actions", "data": {"actions": [{**action, "softwareAgent": {"name": "unlearnable", "version": __version__}}]}},
        ],
    }
    settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}})  # no copy of the image in the manifest
    output = io.BytesIO()
    with optout._signer() as signer, c2pa.Builder(manifest, context=c2pa.Context(settings)) as builder:
        # EDIT: the first action is c2pa.opened on the parent ingredient (the original when given,
        # else the file before signing), as C2PA requires
        builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
        ingredient_mime = INGREDIENT_MIME_TYPES.get(source.suffix.lower()) if source else None
        if ingredient_mime:
            with open(source, "rb") as handle:
                builder.add_ingredient({"title": source.name, "relationship": "parentOf"}, ingredient_mime, handle)
        try:
            builder.sign(signer, mime, io.BytesIO(data), output)
        except c2pa.C2paError as exc:
            raise SettingsError(f"{optout.c2pa_cert}: C2PA signing failed ({exc}); the chain must be signer certificate first, "
                                "issued by a CA (not self-signed), with the emailProtection or documentSigning usage") from None
    return output.getvalue()


# -- reading -------------------------------------------------------------------------------


def _read_xmp(data: bytes) -> dict:
    pyexiv2 = _exiv2()
    with pyexiv2.ImageData(data) as image:
        xmp = image.read_xmp()
    found: dict = {}
    if "Xmp.plus.DataMining" in xmp:
        found["data_mining"] = xmp["Xmp.plus.DataMining"]
    for key, name in (("Xmp.tdm.reservation", "tdm_reservation"), ("Xmp.tdm.policy", "tdm_policy"),
                      (_CONTACT_EMAIL, "contact"), (_CONTACT_URL, "contact")):  # fmt: skip
        if key in xmp:
            found[name] = xmp[key]
    if "Xmp.dc.creator" in xmp:
        creator = xmp["Xmp.dc.creator"]
        found["creator"] = ", ".join(creator) if isinstance(creator, list) else creator
    if "Xmp.dc.rights" in xmp:
        rights = xmp["Xmp.dc.rights"]
        found["copyright"] = rights.get('lang="x-default"', next(iter(rights.values()), "")) if isinstance(rights, dict) else rights
    return found


def _read_c2pa(data: bytes, mime: str) -> dict | None:
    """The active manifest's opt-out, actions, signer and validation state; None without a manifest."""
    try:
        import c2pa
    except ImportError:
        return {"error": "c2pa-python is not installed (pip install 'unlearnable[c2pa]'); C2PA not checked"}
    if mime not in c2pa.Reader.get_supported_mime_types():  # BMP, for one, cannot carry a manifest
        return None
    try:
        reader = c2pa.Reader(mime, io.BytesIO(data))
    except c2pa.C2paError.ManifestNotFound:
        return None
    except c2pa.C2paError as exc:
        return {"error": f"unreadable C2PA manifest ({exc})"}
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    found: dict = {"validation_state": state, "signer": manifest.get("signature_info", {})}
    failures = results.get("activeManifest", {}).get("failure", [])
    found["validation_failures"] = [f"{f.get('code')}: {f.get('explanation')}" for f in failures]
    for assertion in manifest.get("assertions", []):
        label = assertion.get("label", "")
        if label.split(".v")[0] in (TRAINING_MINING_LABEL, "cawg.training-mining"):
            entries = assertion.get("data", {}).get("entries", {})
            found["training_mining"] = {use: entry.get("use") for use, entry in entries.items()}
        elif label.startswith("c2pa.actions"):
            found["actions"] = []
            for action in assertion.get("data", {}).get("actions", []):
                entry = {key: action[key] for key in ("action", "description") if key in action}
                parameters = {k: v for k, v in action.get("parameters", {}).items() if k != "ingredients"}
                found["actions"].append({**entry, "parameters": parameters} if parameters else entry)
    return found


def inspect_image(path: str | Path, max_bytes: int = 512 << 20) -> dict:
    """Which opt-outs the file carries (XMP/IPTC, TDMRep, C2PA) and this project's protection record.

    Raises InputFileError naming the file when it cannot be read or parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    if path.stat().st_size > max_bytes:
        raise InputFileError(path, f"larger than {max_bytes >> 20} MiB")
    data = path.read_bytes()
    try:
        xmp = _read_xmp(data)
    except RuntimeError as exc:
        raise InputFileError(path, f"cannot read its metadata ({exc})") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            pil_format = image.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputFileError(path, "not an image Pillow can read") from None
    mime = Image.MIME.get(pil_format or "", "")
    credentials = _read_c2pa(data, mime) if mime else None
    c2pa_says_no = bool(credentials and credentials.get("training_mining")
                        and all(use == "notAllowed" for use in credentials["training_mining"].values()))  # fmt: skip
    opted_out = xmp.get("data_mining", "").startswith(PLUS_VOCAB + "DMI-PROHIBITED") or xmp.get("tdm_reservation") == "1" or c2pa_says_no
    from .images import read_provenance

    return {"file": str(path), "opted_out": opted_out, "xmp": xmp, "c2pa": credentials, "protection": read_provenance(path)}


def describe_inspection(report: dict) -> str:
    """The inspection as lines for a terminal."""
    lines = [f"{report['file']}: {'opted out of training/mining' if report['opted_out'] else 'no opt-out found'}"]
    xmp = report["xmp"]
    if xmp:
        lines += [f"  XMP {name}: {value}" for name, value in xmp.items()]
    else:
        lines.append("  XMP: no PLUS data-mining, TDMRep or IPTC rights fields")
    credentials = report["c2pa"]
    if credentials is None:
        lines.append("  C2PA: no manifest")
    elif "error" in credentials:
        lines.append(f"  C2PA: {credentials['error']}")
    else:
        signer = credentials.get("signer", {})
        lines.append(f"  C2PA: manifest {credentials.get('validation_state')}, signed by {signer.get('common_name') or signer.get('issuer') or 'unknown'}")
        lines += [f"    {failure}" for failure in credentials["validation_failures"]]
        for use, value in (credentials.get("training_mining") or {}).items():
            lines.append(f"    {use}: {value}")
        for action in credentials.get("actions", []):
            lines.append(f"    action {action.get('action')}: {action.get('description', '')}".rstrip(": "))
    protection = report["protection"]
    if protection:
        lines.append(f"  protection record: {protection.get('method')} budget {protection.get('budget')}/255, "
                     f"{protection.get('steps')} steps, model {protection.get('model')}")  # fmt: skip
    else:
        lines.append("  protection record: none")
    return "\n".join(lines)
