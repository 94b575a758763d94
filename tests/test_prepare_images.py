"""Images in `ft prepare`: every way a record gives them becomes TRL's vision shape (content parts with one
{"type": "image"} per entry of an `images` column of absolute paths); each file is checked with PIL, and each bad
one is one `path:LINE: field: image SRC: reason` line.

The referee for the shape is TRL itself: `trl.data_utils.prepare_multimodal_messages` must fill every image part
from the record's `images` (it raises when the counts differ) and `is_conversational` must see messages; the
`datasets` JSON loader must read the file into one table (text and image records cannot share a column type).
Images are real files made with PIL; the bad ones are real bad files (truncated, empty, a header that claims
100000x100000 pixels, not an image). Two cases run the CLI in a subprocess, as a user does.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from ft_cli.core.errors import DataError
from ft_cli.data.convert import load_records
from ft_cli.data.prepare import PrepareOptions, prepare

QUESTION = "What colour is this?"


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def png_bytes(colour: str, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, and no pixels: PIL reads the size without decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(img / "red.png")
    Image.new("RGB", (32, 48), "blue").save(img / "blue.jpg", "JPEG")
    noisy = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(noisy, "JPEG")
    (img / "truncated.jpg").write_bytes(noisy.getvalue()[: len(noisy.getvalue()) // 2])  # verify() alone passes it
    whole = png_bytes("red", (64, 64))
    (img / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (img / "empty.png").write_bytes(b"")
    (img / "huge.png").write_bytes(huge_png_header(100_000, 100_000))
    (img / "notes.png").write_text("not an image\n")
    return tmp_path / "data"


def user_parts(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


def answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def contract(parts: list[dict], reply: str, images: list[Path]) -> dict:
    return {
        "messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": reply}]}],
        "images": [str(p) for p in images],
    }


IMAGE, ASK = {"type": "image"}, {"type": "text", "text": QUESTION}


def run(data_dir: Path, text: str, name: str = "in.jsonl", **options) -> tuple[list[dict], Path, object]:
    source = data_dir / name
    source.write_text(text)
    output = data_dir.parent / "out" / "train.jsonl"
    result = prepare(PrepareOptions(inputs=[str(source)], output=output, **options))
    return [json.loads(line) for line in output.read_text().splitlines()], output, result


def written(directory: Path) -> list[str]:
    """What a run left in its output directory, hidden temp files and staged images included."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def assert_trl_accepts(records: list[dict], output: Path) -> None:
    """TRL's own helpers fill every image part from `images`, and datasets reads the file as one table."""
    from datasets import load_dataset
    from trl.data_utils import is_conversational, prepare_multimodal_messages

    for record in records:
        assert is_conversational(record)
        opened = [Image.open(path) for path in record["images"]]
        filled = prepare_multimodal_messages(record["messages"], images=opened)  # raises on a count mismatch
        placed = [part["image"] for message in filled for part in message["content"] if part["type"] == "image"]
        assert [image.filename for image in placed] == record["images"]
        assert all(Path(path).is_absolute() and Path(path).is_file() for path in record["images"])
    table = load_dataset("json", data_files=str(output), split="train")
    assert table.num_rows == len(records)


def test_every_input_form_becomes_the_contract(data_dir: Path):
    red, blue = (data_dir / "img" / "red.png").resolve(), (data_dir / "img" / "blue.jpg").resolve()
    embedded = png_bytes("green")
    records, output, result = run(
        data_dir,
        jsonl(
            {"messages": [user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]},
            {"messages": [user_parts(ASK, {"type": "image", "image": str(blue)}), answer("blue")]},  # absolute, TRL's key
            {"messages": [user_parts({"type": "image_url", "image_url": {"url": data_url(embedded)}}, ASK), answer("green")]},
            {"messages": [user_parts(IMAGE, IMAGE, ASK), answer("red and blue")], "images": ["img/red.png", "img/blue.jpg"]},  # TRL's
            {"messages": [{"role": "user", "content": "<image>" + QUESTION}, answer("red")], "images": ["img/red.png"]},
            {"messages": [{"role": "user", "content": "No picture: say hi"}, answer("hi")], "images": []},
        ),
        preview=1,
    )
    written = output.with_name("train.images") / (hashlib.sha256(embedded).hexdigest() + ".png")
    assert written.read_bytes() == embedded
    assert records == [
        contract([IMAGE, ASK], "red", [red]),
        contract([ASK, IMAGE], "blue", [blue]),
        contract([IMAGE, ASK], "green", [written.resolve()]),
        contract([IMAGE, IMAGE, ASK], "red and blue", [red, blue]),
        contract([IMAGE, ASK], "red", [red]),
        contract([{"type": "text", "text": "No picture: say hi"}], "hi", []),
    ]
    assert_trl_accepts(records, output)
    stats = result.stats.images
    assert (stats.total, stats.records, stats.most_in_record, stats.smallest, stats.largest) == (6, 5, 2, (8, 8), (64, 64))
    manifest = json.loads(output.with_name("train.manifest.json").read_text())
    assert manifest["images"]["total"] == 6 and manifest["images"]["max_image_pixels"] == 50_000_000
    # The preview shows the image where it sits, in the prompt
    assert result.previews[0]["messages"][0]["content"] == f"[image 1: 64x64 img/red.png]{QUESTION}"
    # Prepared again, it is unchanged (the contract is an input form too), and ft train reads it as it is
    again = output.with_name("again.jsonl")
    prepare(PrepareOptions(inputs=[str(output)], output=again))
    assert again.read_text() == output.read_text()
    assert load_records(output).unchanged


def test_sharegpt_and_alpaca_with_an_images_column(data_dir: Path):
    red = (data_dir / "img" / "red.png").resolve()
    sharegpt = {
        "conversations": [{"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": "red"}],
        "system": "Answer in one word.",
        "images": ["img/red.png"],
    }
    records, output, _ = run(data_dir, jsonl(sharegpt), "sharegpt.jsonl")
    assert records == [
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
                {"role": "user", "content": [IMAGE, {"type": "text", "text": "\n" + QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            ],
            "images": [str(red)],
        }
    ]
    assert_trl_accepts(records, output)
    alpaca = {"instruction": "Name the colour.", "input": "<image>", "output": "red", "images": ["img/red.png"]}
    records, output, _ = run(data_dir, jsonl(alpaca), "alpaca.jsonl")
    assert records == [contract([{"type": "text", "text": "Name the colour.\n\n"}, IMAGE], "red", [red])]
    assert_trl_accepts(records, output)


BAD = {
    "missing": (
        {"messages": [user_parts({"type": "image", "path": "img/nope.png"}, ASK), answer("red")]},
        "messages[0].content[0]: image img/nope.png: no such file ({dir}/img/nope.png)",
    ),
    "zero-size": (
        {"messages": [user_parts({"type": "image", "path": "img/empty.png"}, ASK), answer("red")]},
        "messages[0].content[0]: image img/empty.png: empty file (0 bytes)",
    ),
    "too-large": (
        {"messages": [{"role": "user", "content": "<image>Big?"}, answer("yes")], "images": ["img/huge.png"]},
        "images[0]: image img/huge.png: 100000x100000 is 10000000000 pixels, more than --max-image-pixels 50000000",
    ),
    "not-an-image": (
        {"messages": [user_parts({"type": "image", "path": "img/notes.png"}), answer("red")]},
        "messages[0].content[0]: image img/notes.png: not an image PIL can read",
    ),
    "remote": (
        {"messages": [user_parts({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), answer("red")]},
        "messages[0].content[0]: image https://example.com/a.png: remote images are not fetched; download them and give a path",
    ),
    "count": (
        {"messages": [{"role": "user", "content": "<image>" + QUESTION}, answer("red")], "images": ["img/red.png", "img/blue.jpg"]},
        'images: 2 image(s) listed but 1 <image> placeholder(s) or {"type": "image"} part(s) in the turns',
    ),
    "answer-image": (
        {"messages": [user_parts(ASK), {"role": "assistant", "content": [{"type": "image", "path": "img/red.png"}]}]},
        "messages[1].content[0]: an image in an assistant turn: ft trains text answers, so images go in user turns",
    ),
    "sharegpt-answer-image": (
        {"conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "<image>"}], "images": ["img/red.png"]},
        "conversations[1].value: <image> in a gpt turn: ft trains text answers, so images go in user turns",
    ),
    "bad-base64": (
        {"messages": [user_parts({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}), answer("red")]},
        "messages[0].content[0]: image data:image/png;base64,@@@: the data: URL is not valid base64",
    ),
    "video": (
        {"messages": [user_parts({"type": "video", "path": "v.mp4"}), answer("red")]},
        "messages[0].content[0].type: 'video' parts are not read (expected text, image or image_url)",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_image_is_one_line_naming_file_line_and_image(data_dir: Path, case: str):
    record, expected = BAD[case]
    good = {"messages": [user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]}
    if "conversations" in record:
        good = {"conversations": [{"from": "human", "value": "<image>" + QUESTION}, {"from": "gpt", "value": "red"}], "images": ["img/red.png"]}
    source = data_dir / "in.jsonl"
    with pytest.raises(DataError) as error:
        run(data_dir, jsonl(good, record))
    assert error.value.problems == [f"{source}:2: " + expected.replace("{dir}", str(data_dir))]
    assert written(data_dir.parent / "out") == []  # nothing half-written


@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg"])
def test_truncated_files_are_undecodable(data_dir: Path, name: str):
    with pytest.raises(DataError) as error:
        run(data_dir, jsonl({"messages": [user_parts({"type": "image", "path": f"img/{name}"}, ASK), answer("red")]}))
    (problem,) = error.value.problems
    assert re.fullmatch(rf"{re.escape(str(data_dir))}/in\.jsonl:1: messages\[0\]\.content\[0\]: image img/{re.escape(name)}: cannot be decoded: .+", problem)


def test_text_and_image_records_must_share_a_shape(data_dir: Path):
    with pytest.raises(DataError) as error:
        run(data_dir, jsonl({"messages": [user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]}, {"messages": [{"role": "user", "content": "hi"}, answer("hi")]}))
    assert error.value.problems == [
        f"{data_dir}/in.jsonl:2: expected messages with an images column like the first record; give every record an images column (images: [] where a record has none)"
    ]


def test_skip_invalid_keeps_the_good_records_and_embedded_images_land_once(data_dir: Path):
    embedded = png_bytes("green")
    part = {"type": "image_url", "image_url": {"url": data_url(embedded)}}
    records, output, result = run(
        data_dir,
        jsonl(
            {"messages": [user_parts(part, ASK), answer("green")]},
            {"messages": [user_parts({"type": "image", "path": "img/empty.png"}), answer("red")]},
            {"messages": [user_parts(part, {"type": "text", "text": "Again?"}), answer("green")]},
        ),
        skip_invalid=True,
    )
    assert len(records) == 2 and records[0]["images"] == records[1]["images"]
    assert [p.name for p in output.with_name("train.images").iterdir()] == [Path(records[0]["images"][0]).name]
    (reject,) = [json.loads(line) for line in output.with_name("train.rejects.jsonl").read_text().splitlines()]
    assert reject["reason"] == "messages[0].content[0]: image img/empty.png: empty file (0 bytes)"
    # A different file under an embedded image's name is never replaced
    Path(records[0]["images"][0]).write_bytes(b"someone else's file")
    with pytest.raises(DataError) as error:
        run(data_dir, jsonl({"messages": [user_parts(part, ASK), answer("green")]}))
    assert error.value.problems[0].endswith("exists with other content; ft does not replace it")


def test_cli_preview_marks_images_in_the_prompt_with_a_text_tokenizer(data_dir: Path, family_model_dir, ft):
    model = family_model_dir("qwen2.5")
    (data_dir / "in.jsonl").write_text(jsonl({"messages": [user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]}))
    output = data_dir.parent / "out" / "train.jsonl"
    result = ft("prepare", data_dir / "in.jsonl", "-o", output, "--model", model, "--preview", "1", env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "[image 1: 64x64 img/red.png]What colour is this?<|im_end|>" in result.stdout
    trained = re.findall(r"⟦(.*?)⟧", result.stdout.split("--- record 1", 1)[1], re.S)
    assert trained == ["red<|im_end|>\n"] or trained == ["red<|im_end|>"]  # the answer alone; the image never
    assert re.search(r"images\s+│\s+1 in 1 records \(at most 1 per record\); sizes 64x64 to 64x64", result.stdout)


def test_cli_pixel_limit_refuses_with_exit_2_and_writes_nothing(data_dir: Path, ft):
    (data_dir / "in.jsonl").write_text(jsonl({"messages": [user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]}))
    output = data_dir.parent / "out" / "train.jsonl"
    result = ft("prepare", data_dir / "in.jsonl", "-o", output, "--max-image-pixels", "1000")
    assert result.returncode == 2
    assert f"{data_dir}/in.jsonl:1: messages[0].content[0]: image img/red.png: 64x64 is 4096 pixels, more than --max-image-pixels 1000" in result.stderr
    assert "Traceback" not in result.stderr
    assert written(output.parent) == []


def test_preference_pairs_keep_their_images_in_the_prompt(data_dir: Path):
    """TRL's vision DPO shape; its collator fills the prompt from `images` and reads chosen/rejected as they are."""
    from trl.data_utils import is_conversational, prepare_multimodal_messages

    red = (data_dir / "img" / "red.png").resolve()
    pair = {
        "prompt": [{"role": "user", "content": "<image>" + QUESTION}],
        "chosen": [{"role": "assistant", "content": "red"}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
        "images": ["img/red.png"],
    }
    records, output, result = run(data_dir, jsonl(pair), "pairs.jsonl", preview=1)
    assert records == [
        {
            "prompt": [{"role": "user", "content": [IMAGE, ASK]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
            "images": [str(red)],
        }
    ]
    (record,) = records
    assert is_conversational(record)
    filled = prepare_multimodal_messages(record["prompt"], images=[Image.open(record["images"][0])])
    assert filled[0]["content"][0]["image"].size == (64, 64)
    assert prepare_multimodal_messages(record["chosen"]) == record["chosen"]
    assert result.previews[0]["prompt"][0]["content"] == f"[image 1: 64x64 img/red.png]{QUESTION}"


REFUSED = {
    "string-prompt-pair": (
        {"prompt": "<image>" + QUESTION, "chosen": "red", "rejected": "blue", "images": ["img/red.png"]},
        {},
        "prompt: a preference pair with images gives its prompt as a list of messages (prompt + chosen + rejected)",
    ),
    "completion": ({"prompt": "<image>", "completion": "red", "images": ["img/red.png"]}, {}, "images: images are read in chat, sharegpt, alpaca and preference records; not in completion data"),
    "template": (
        {"messages": [user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]},
        {"template": "chatml"},
        "--template chatml renders text; records with images keep their messages (leave --template out)",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_is_not_read_with_images_is_refused_with_the_reason(data_dir: Path, case: str):
    record, options, expected = REFUSED[case]
    with pytest.raises(DataError) as error:
        run(data_dir, jsonl(record), **options)
    assert error.value.problems == [f"{data_dir}/in.jsonl:1: {expected}"]


def test_training_on_raw_data_refuses_embedded_images_and_reads_paths(data_dir: Path):
    """ft train given raw data reads it as prepare does, but writes no files: a data: URL asks for ft prepare."""
    source = data_dir / "raw.jsonl"
    source.write_text(jsonl({"messages": [user_parts({"type": "image_url", "image_url": {"url": data_url(png_bytes("green"))}}), answer("green")]}))
    with pytest.raises(DataError) as error:
        load_records(source)
    assert error.value.problems[0].endswith("embedded images are written out by ft prepare; run ft prepare on this file and train on its output")
    source.write_text(jsonl({"messages": [user_parts({"type": "image", "path": "img/red.png"}), answer("red")]}))
    assert load_records(source).records[0]["images"] == [str((data_dir / "img" / "red.png").resolve())]


def test_system_images_pass_tool_images_refused_and_text_parts_stay_text(data_dir: Path):
    system = {"role": "system", "content": [{"type": "image", "path": "img/blue.jpg"}, {"type": "text", "text": "Reference colour."}]}
    records, _, _ = run(data_dir, jsonl({"messages": [system, user_parts({"type": "image", "path": "img/red.png"}, ASK), answer("red")]}))
    assert [Path(p).name for p in records[0]["images"]] == ["blue.jpg", "red.png"]
    records, _, _ = run(data_dir, jsonl({"messages": [user_parts(ASK, {"type": "text", "text": " Say it."}), answer("red")]}))
    assert records == [{"messages": [{"role": "user", "content": QUESTION + " Say it."}, {"role": "assistant", "content": "red"}]}]
    tool = {"role": "tool", "content": [{"type": "image", "path": "img/red.png"}]}
    with pytest.raises(DataError) as error:
        run(data_dir, jsonl({"messages": [user_parts(ASK), answer("red"), tool, answer("red")]}))
    assert error.value.problems == [f"{data_dir}/in.jsonl:1: messages[2].content[0]: an image in a tool turn: TRL places no image in a tool turn"]


def test_a_failed_run_leaves_no_embedded_image_behind(data_dir: Path):
    embedded = {"messages": [user_parts({"type": "image_url", "image_url": {"url": data_url(png_bytes("green"))}}), answer("green")]}
    with pytest.raises(DataError):
        run(data_dir, jsonl(embedded, {"messages": [user_parts({"type": "image", "path": "img/empty.png"}), answer("red")]}))
    assert written(data_dir.parent / "out") == []
