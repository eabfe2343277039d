"""The web UI over a collection holding a file whose name is not valid UTF-8 (Latin-1 ``caf\\xe9`` on Linux).

The catalog hands such a path back with a lone surrogate (``'\\udce9'``); every table, caption and download
name must show it readably (U+FFFD for the undecodable byte), while thumbnails and originals still come
from the true file.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmretrieval.training import scenes
from ui_support import running_app

pytestmark = pytest.mark.skipif(sys.platform in ("win32", "darwin"),
                                reason="needs a file system that accepts any bytes in a name")

LATIN1_NAME = b"caf\xe9-latin1.png"
SHOWN_NAME = "caf\ufffd-latin1.png"  # how the UI shows it
SCENES = 4  # other images beside it


def _sendable(value) -> bool:
    """Whether ``value`` (captions, JSON, Markdown, HTML) can go to a browser as UTF-8 JSON."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A few scenes, one saved under a Latin-1 name, and a corrupt file with a Latin-1 name (a failure row)."""
    folder = tmp_path_factory.mktemp("latin1-images")
    for index in range(SCENES):
        scenes.generate(7, index, held_out="include", size=64).image.save(folder / f"scene-{index}.png")
    with open(os.path.join(os.fsencode(folder), LATIN1_NAME), "wb") as out:
        scenes.generate(7, SCENES, held_out="include", size=64).image.save(out, format="PNG")
    with open(os.path.join(os.fsencode(folder), b"bro\xe9ken.png"), "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    return folder


@pytest.fixture(scope="module")
def context(folder, tmp_path_factory, tiny_model_dir, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext

    directory = tmp_path_factory.mktemp("latin1-collection") / "collection"
    collection = Collection.open(directory, model=str(tiny_model_dir), create=True, device="cpu")
    collection.ingest([folder], workers=0)
    yield AppContext(collection=collection, encoder=tiny_encoder, title="latin-1 names")
    collection.close()


@pytest.fixture(scope="module")
def latin1(folder, context) -> tuple[int, Path]:
    """The catalog id and true path of the Latin-1 file."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), LATIN1_NAME)))
    image_id = context.collection.catalog.id_of_path(path)
    assert image_id is not None and path.exists()
    return image_id, path


def _rendered(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_display_path_shows_undecodable_bytes_as_replacement_characters():
    from mmretrieval.ui.names import display_path

    assert display_path(os.fsdecode(b"/photos/" + LATIN1_NAME)) == "/photos/" + SHOWN_NAME
    assert display_path(Path("/photos/café.png")) == "/photos/café.png"  # valid UTF-8 is kept as it is
    assert display_path("no \ud800 file system makes this") == "no ? file system makes this"


def test_search_similar_and_details_show_a_non_utf8_name_and_its_true_image(context, latin1):
    from mmretrieval.ui.search_handlers import SearchHandlers

    image_id, path = latin1
    handlers = SearchHandlers(context)
    gallery, hits, _, ids, status = handlers.search("a blue circle", None, "", SCENES + 1, -1)
    assert image_id in ids and _sendable([caption for _, caption in gallery]) and _sendable(hits)
    shown = ids.index(image_id)
    assert gallery[shown][1].endswith(f" · {SHOWN_NAME}") and hits[shown]["file"] == f"{path.parent}/{SHOWN_NAME}"
    assert np.array_equal(np.asarray(gallery[shown][0].convert("RGB")), _rendered(path))  # the file, not a grey tile

    other = next(i for i in ids if i != image_id)
    gallery, hits, _, ids, _ = handlers.similar(other, SCENES, -1)
    assert image_id in ids and _sendable([caption for _, caption in gallery]) and _sendable(hits)

    preview, details, selected, original = handlers.image_info(image_id)
    assert selected == image_id and _sendable(details) and _sendable(original)
    assert f"**{SHOWN_NAME}**" in details and "file: missing" not in details  # the size comes from the true file
    assert Path(original).name == SHOWN_NAME and Path(original).read_bytes() == path.read_bytes()
    scale = preview.width // 64  # small images are enlarged, pixels kept sharp
    assert np.array_equal(np.asarray(preview.convert("RGB"))[::scale, ::scale], _rendered(path))

    archive, note = handlers.originals_zip([image_id, other])
    with zipfile.ZipFile(archive) as opened:
        assert SHOWN_NAME in opened.namelist() and opened.read(SHOWN_NAME) == path.read_bytes()
    assert note.startswith("2 original files")


def test_failed_files_duplicates_and_map_show_non_utf8_names(context, folder, latin1):
    from mmretrieval.ui.collection_handlers import CollectionHandlers
    from mmretrieval.ui.duplicate_handlers import DuplicateHandlers
    from mmretrieval.ui.map_handlers import MapHandlers

    image_id, path = latin1
    info, failures = CollectionHandlers(context).collection_info()
    assert list(failures["path"]) == [f"{folder}/bro\ufffdken.png"] and _sendable(failures.to_dict())

    maps = MapHandlers(context)
    ids = json.loads(maps.collection_map("", "pca")[0])["points"]["ids"]
    assert maps.map_thumbnail(image_id)["name"] == SHOWN_NAME
    _, gallery, _ = maps.map_select(type("Select", (), {"index": ids})())
    assert _sendable([caption for _, caption in gallery]) and any(c.endswith(SHOWN_NAME) for _, c in gallery)

    if not hasattr(context.collection, "duplicates"):
        pytest.skip("this build has no Collection.duplicates (mmr duplicates) yet")
    review, _, files, _ = DuplicateHandlers(context).duplicates(0.0001)  # every image alike: one group
    assert SHOWN_NAME in review and _sendable(review)
    exported = Path(files[1]).read_bytes()  # the export names the true file, byte for byte
    assert os.fsencode(path) in exported or os.fsencode(path) in Path(files[0]).read_bytes()


def test_http_api_serves_results_details_and_originals_of_non_utf8_names(context, latin1):
    from gradio_client import Client

    image_id, path = latin1
    with running_app(context) as url:
        client = Client(url + "/", verbose=False)
        gallery, hits, _, _ = client.predict("a blue circle", k=SCENES + 1, api_name="/search")
        assert SHOWN_NAME in [Path(hit["file"]).name for hit in hits]
        assert any(item["caption"].endswith(SHOWN_NAME) for item in gallery)
        other = next(hit["id"] for hit in hits if hit["id"] != image_id)
        _, similar_hits, _, _ = client.predict(other, k=SCENES, api_name="/similar")
        assert image_id in [hit["id"] for hit in similar_hits]
        preview, details, selected, original = client.predict(image_id, api_name="/image_info")
        assert selected == image_id and SHOWN_NAME in details
        assert Path(original).name == SHOWN_NAME and Path(original).read_bytes() == path.read_bytes()
        assert Path(preview).is_file()


def test_the_details_panel_names_the_most_probable_labels_and_counts_the_rest(tmp_path):
    """A multi-label set of thousands of labels gave one image hundreds: the panel listed them all (11 KB)."""
    from mmretrieval.ui.image_details import LABELS_SHOWN, ImageDetails, describe_details

    labels = tuple((f"label {n}", 1 - n / 1000) for n in range(249))
    text = describe_details(7, ImageDetails(tmp_path / "a.png", 10, 10, None, labels))
    line = next(line for line in text.splitlines() if line.startswith("- labels: "))
    assert line.count("(0.") + line.count("(1.") == LABELS_SHOWN and "label 0 (1.00)" in line
    assert line.endswith(f" and {249 - LABELS_SHOWN:,} more (each set's CSV export lists them all)")
    few = describe_details(7, ImageDetails(tmp_path / "a.png", 10, 10, None, labels[:3]))
    assert "more" not in few and "label 2 (1.00)" in few


def test_a_long_file_name_is_cut_in_its_middle_under_a_result():
    """A caption is one line of a thumbnail's width: its end (a version, the extension) was cut off."""
    from mmretrieval.collection.records import Hit
    from mmretrieval.ui.search_handlers import CAPTION_NAME_CHARS, hit_caption

    long_name = "IMG_0007_a_very_long_descriptive_filename_final_v2.jpg"
    caption = hit_caption(Hit(1, f"/photos/{long_name}", 0.25))
    name = caption.split(" · ", 1)[1]
    assert caption.startswith("0.250 · ") and len(name) == CAPTION_NAME_CHARS
    assert name.startswith("IMG_0007_a_v") and name.endswith("final_v2.jpg") and "…" in name
    assert hit_caption(Hit(2, "/photos/short.jpg", 0.5)) == "0.500 · short.jpg"
    assert hit_caption(Hit(3, f"/photos/{long_name}", float("nan")), "2024-06-01T12:00:00").endswith("final_v2.jpg")
