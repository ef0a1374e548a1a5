"""The machine-readable opt-out: XMP/IPTC/TDMRep written and read back by pyexiv2 and by exiftool,
pixels untouched, a C2PA manifest signed with a throwaway certificate chain and read back by c2pa."""

from __future__ import annotations

import datetime
import importlib.util
import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from shared_core.errors import InputFileError, SettingsError
from shared_core.images import encode_image, read_provenance
from shared_core.optout import OptOut, apply_optout, describe_inspection, inspect_image, protection_action
from shared_core.protect import ProtectSettings, protect_files

FORMATS = ["png", "jpeg", "webp"]
PROVENANCE = {"tool": "unlearnable", "method": "eudp", "budget": 8.0, "steps": 2, "model": "test:tiny64"}
FULL = OptOut(creator="Ann Artist", copyright="(c) 2026 Ann Artist", contact="ann@example.org", tdm_policy="https://example.org/tdm.json")


def need(module: str | None = None, program: str | None = None) -> None:
    """Skip without the library or program, except in CI, where a skip would hide an untested feature."""
    missing = (module and importlib.util.find_spec(module) is None) or (program and shutil.which(program) is None)
    if missing:
        message = f"{module or program} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI installs it (.ci/run)")
        pytest.skip(message)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))


def exiftool(path) -> dict:
    need(program="exiftool")
    out = subprocess.run(["exiftool", "-j", "-G1", "-struct", "-XMP:all", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


@pytest.fixture(scope="module")
def photo(photos):
    return photos[0][100:164, 180:260]


@pytest.fixture(scope="module")
def c2pa_chain(tmp_path_factory):
    """A throwaway CA and an ES256 signing certificate issued by it (emailProtection), as c2pa requires."""
    need("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, ca: bool):
        usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                     encipher_only=False, decipher_only=False)  # fmt: skip
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )  # fmt: skip
        if not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Opt-out test")])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(name("Opt-out test CA"), name("Opt-out test CA"), ca_key.public_key(), ca_key, ca=True)
    leaf = certificate(name("Opt-out test signer"), ca.subject, key.public_key(), ca_key, ca=False)
    folder = tmp_path_factory.mktemp("c2pa")
    pem = serialization.Encoding.PEM
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "chain.pem", folder / "key.pem"


@pytest.mark.parametrize("fmt", FORMATS)
def test_xmp_optout_is_read_back_by_pyexiv2_and_exiftool_and_leaves_pixels_alone(tmp_path, photo, fmt):
    need("pyexiv2")
    alpha = None if fmt == "jpeg" else np.linspace(0, 255, photo.shape[0] * photo.shape[1]).astype(np.uint8).reshape(photo.shape[:2])
    plain = encode_image(photo, fmt, alpha=alpha, metadata=PROVENANCE)
    marked = apply_optout(plain, fmt, FULL)
    assert marked != plain
    assert np.array_equal(decode(plain), decode(marked))  # metadata only: same decoded pixels (and alpha)
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(marked)

    report = inspect_image(path)
    assert report["opted_out"] and report["protection"] == PROVENANCE  # the provenance record survives
    assert report["xmp"] == {
        "data_mining": "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED",
        "tdm_reservation": "1",
        "tdm_policy": "https://example.org/tdm.json",
        "creator": "Ann Artist",
        "copyright": "(c) 2026 Ann Artist",
        "contact": "ann@example.org",
    }
    found = exiftool(path)
    assert found["XMP-plus:DataMining"] == "http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED"
    assert str(found["XMP-tdm:Reservation"]) == "1" and found["XMP-tdm:Policy"] == "https://example.org/tdm.json"
    assert found["XMP-dc:Creator"] == ["Ann Artist"] and found["XMP-dc:Rights"] == "(c) 2026 Ann Artist"
    assert found["XMP-xmpRights:Marked"] in (True, "True")
    assert found["XMP-iptcCore:CreatorContactInfo"] == {"CiEmailWork": "ann@example.org"}


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_icc_profile_and_variants(tmp_path, photo):
    need("pyexiv2")
    plain = encode_image(photo, "png", icc_profile=_srgb_profile())
    marked = apply_optout(plain, "png", OptOut(data_mining="prohibited-genai-training", contact="https://ann.example.org"))
    with Image.open(io.BytesIO(marked)) as image:
        assert image.info["icc_profile"] == _srgb_profile()
    path = tmp_path / "v.png"
    path.write_bytes(marked)
    xmp = inspect_image(path)["xmp"]
    assert xmp["data_mining"].endswith("DMI-PROHIBITED-GENAIMLTRAINING") and xmp["contact"] == "https://ann.example.org"
    assert "creator" not in xmp and "tdm_policy" not in xmp
    with pytest.raises(SettingsError, match="data-mining"):
        OptOut(data_mining="allowed")
    with pytest.raises(SettingsError, match="both"):
        OptOut(c2pa_cert="cert.pem")
    with pytest.raises(SettingsError, match="URL"):
        OptOut(tdm_policy="example.org/policy")


def test_protect_writes_the_optout_without_changing_pixels(tmp_path, photo, tiny_surrogate):
    need("pyexiv2")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(photo[:64, :64]).save(inputs / "a.png")
    Image.fromarray(photo[:48, 16:64]).save(inputs / "b.jpg", quality=92)
    settings = ProtectSettings(method="advdm", steps=2, budget=8, tile_size=64)
    plain = protect_files([inputs], tmp_path / "plain", tiny_surrogate, settings, fmt="webp", quality=100)
    marked = protect_files([inputs], tmp_path / "marked", tiny_surrogate, settings, fmt="webp", quality=100, optout=FULL)
    assert plain.optout is None and marked.optout == FULL.describe() == marked.to_dict()["optout"]
    assert [o.status for o in marked.outcomes] == ["protected"] * 2
    for a, b in zip(plain.outcomes, marked.outcomes):
        assert np.array_equal(decode(open(a.output, "rb").read()), decode(open(b.output, "rb").read()))
        assert b.linf == a.linf <= 8
        assert inspect_image(b.output)["opted_out"] and not inspect_image(a.output)["opted_out"]
        assert read_provenance(b.output)["fingerprint"] != read_provenance(a.output)["fingerprint"]
    again = protect_files([inputs], tmp_path / "plain", tiny_surrogate, settings, fmt="webp", quality=100, optout=FULL)
    assert [o.status for o in again.outcomes] == ["protected"] * 2  # adding the opt-out redoes outputs made without it


def test_c2pa_manifest_is_signed_embedded_and_read_back(tmp_path, photo, c2pa_chain, photo_folder):
    need("pyexiv2")
    need("c2pa")
    import c2pa

    cert, key = c2pa_chain
    optout = OptOut(creator="Ann Artist", c2pa_cert=str(cert), c2pa_key=str(key))
    optout.check()
    source = photo_folder / "photo0.png"
    for fmt, mime in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
        plain = encode_image(photo, fmt, metadata=PROVENANCE)
        signed = apply_optout(plain, fmt, optout, action=protection_action(PROVENANCE), source=source)
        assert np.array_equal(decode(plain), decode(signed))
        with c2pa.Reader(mime, io.BytesIO(signed)) as reader:  # the same library, independently of inspect_image
            store = json.loads(reader.json())
            assert reader.get_validation_state() == "Valid"
        manifest = store["manifests"][store["active_manifest"]]
        labels = {a["label"]: a["data"] for a in manifest["assertions"]}
        assert labels["c2pa.training-mining"]["entries"] == {
            use: {"use": "notAllowed"} for use in ("c2pa.ai_generative_training", "c2pa.ai_inference", "c2pa.ai_training", "c2pa.data_mining")
        }
        actions = labels["c2pa.actions.v2"]["actions"]
        assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
        assert actions[1]["parameters"]["method"] == "eudp" and actions[1]["softwareAgent"]["name"] == "unlearnable"
        assert manifest["ingredients"][0]["title"] == "photo0.png" and manifest["ingredients"][0]["relationship"] == "parentOf"

        path = tmp_path / f"signed.{fmt}"
        path.write_bytes(signed)
        report = inspect_image(path)
        assert report["xmp"]["creator"] == "Ann Artist" and report["protection"] == PROVENANCE
        credentials = report["c2pa"]
        assert credentials["validation_state"] == "Valid" and credentials["signer"]["common_name"] == "Opt-out test signer"
        assert set(credentials["training_mining"].values()) == {"notAllowed"} and len(credentials["training_mining"]) == 4
        assert credentials["actions"][1]["description"].startswith("perturbed against diffusion-model training")
        text = describe_inspection(report)
        assert "C2PA: manifest Valid" in text and "c2pa.ai_training: notAllowed" in text
        # a changed byte of image data breaks the hard binding, and the reader says so
        if fmt == "jpeg":
            tampered = bytearray(signed)
            tampered[-10] ^= 0x01  # entropy-coded data just before the end-of-image marker
            path.write_bytes(bytes(tampered))
            broken = inspect_image(path)["c2pa"]
            assert broken["validation_state"] == "Invalid" and any("mismatch" in f for f in broken["validation_failures"])


def test_bad_certificate_and_unreadable_files(tmp_path, c2pa_chain):
    need("pyexiv2")
    need("c2pa")
    cert, key = c2pa_chain
    with pytest.raises(SettingsError, match="C2PA signing failed"):
        OptOut(c2pa_cert=str(key), c2pa_key=str(key)).check()
    with pytest.raises(SettingsError, match="not a usable es256"):
        OptOut(c2pa_cert=str(cert), c2pa_key=str(cert)).check()
    with pytest.raises(InputFileError, match="cannot read the C2PA private key"):
        OptOut(c2pa_cert=str(cert), c2pa_key=str(tmp_path / "missing.pem")).check()
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputFileError, match="junk.png"):
        inspect_image(tmp_path / "junk.png")
    with pytest.raises(InputFileError, match="no such file"):
        inspect_image(tmp_path / "none.png")


def test_inspect_image_command(tmp_path, photo, capsys):
    need("pyexiv2")
    from shared_core.cli import main

    (tmp_path / "plain.png").write_bytes(encode_image(photo, "png"))
    (tmp_path / "marked.jpg").write_bytes(apply_optout(encode_image(photo, "jpeg", metadata=PROVENANCE), "jpeg", FULL))
    (tmp_path / "junk.webp").write_bytes(b"RIFF")
    assert main(["inspect-image", str(tmp_path / "plain.png"), str(tmp_path / "marked.jpg"), str(tmp_path / "junk.webp"), "--json"]) == 1
    captured = capsys.readouterr()
    plain, marked = json.loads(captured.out)
    assert "junk.webp" in captured.err
    assert not plain["opted_out"] and plain["xmp"] == {} and plain["protection"] is None
    assert marked["opted_out"] and marked["xmp"]["copyright"] == "(c) 2026 Ann Artist" and marked["protection"]["method"] == "eudp"
    Image.fromarray(photo).save(tmp_path / "old.bmp")
    assert main(["inspect-image", str(tmp_path / "old.bmp")]) == 0
    assert "C2PA: no manifest" in capsys.readouterr().out
    assert main(["inspect-image", str(tmp_path / "marked.jpg")]) == 0
    text = capsys.readouterr().out
    assert "opted out of training/mining" in text and "protection record: eudp" in text
    assert main(["protect", str(tmp_path / "plain.png"), "--out", str(tmp_path / "o"), "--creator", "Ann"]) == 2
    assert "--creator only take effect with --optout" in capsys.readouterr().err


def test_mark_puts_the_same_optout_on_every_image(tmp_path, photos):
    need("pyexiv2")
    from shared_core.files import sha256_file
    from shared_core.trace.mark import mark_dataset

    dataset = tmp_path / "data"
    dataset.mkdir()
    for index in range(6):
        crop = photos[index % len(photos)][:72, :88]
        if index % 2:
            Image.fromarray(crop).save(dataset / f"img{index}.jpg", quality=90)
        else:
            Image.fromarray(crop).save(dataset / f"img{index}.png")
    Image.fromarray(photos[0][:40, :40]).save(dataset / "old.bmp")
    plain = mark_dataset(dataset, tmp_path / "plain", rate=0.34, trigger="zqv7", seed=1)
    result = mark_dataset(dataset, tmp_path / "out", rate=0.34, trigger="zqv7", seed=1, optout=FULL)
    assert [m["output"] for m in result.marked] == [m["output"] for m in plain.marked]
    for index in range(6):
        name = f"img{index}.{'jpg' if index % 2 else 'png'}"
        report = inspect_image(tmp_path / "out" / name)
        assert report["opted_out"] and report["xmp"]["creator"] == "Ann Artist"
        assert np.array_equal(decode((tmp_path / "out" / name).read_bytes()), decode((tmp_path / "plain" / name).read_bytes()))
    assert (tmp_path / "out" / "old.bmp").read_bytes() == (dataset / "old.bmp").read_bytes()  # BMP has no XMP: copied as is
    for entry in result.marked:
        assert entry["output_sha256"] == sha256_file(tmp_path / "out" / entry["output"])
