"""The README and docs/ hold together: every relative link resolves (its file exists, its #anchor names a
heading there, by GitHub's slug rules), and every `ft ...` example names a real subcommand with options its
parser defines and config keys the schema defines. No model is loaded: the parser is read, never run."""

from __future__ import annotations

import re
import shlex
import unicodedata
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(\s*)(```+|~~~+)(.*)$")
LINK = re.compile(r"(?<!\\)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
OVERRIDE = re.compile(r"^([A-Za-z_][\w.\[\]]*)=")
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "zsh"}


@cache
def ft_command():
    """The click group behind `ft`, built as `ft` builds it (the one line to change when the CLI module moves).

    Typer carries its own copy of click, so commands and parameters are told apart by their attributes."""
    from typer.main import get_command

    from ft_cli.cli import app

    return get_command(app)


@cache
def schema_keys() -> frozenset[str]:
    from ft_cli.config.messages import SCHEMA_KEYS

    return frozenset(SCHEMA_KEYS)


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[tuple[int, str]]]]]:
    """(prose lines, fenced blocks as (info string, lines)), each line with its 1-based number."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, list[tuple[int, str]]]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match[2]
            blocks.append((match[3].strip().lower(), []))
        elif fence is not None and match and match[2].startswith(fence) and not match[3].strip():
            fence = None
        elif fence is not None:
            blocks[-1][1].append((number, line))
        else:
            prose.append((number, line))
    return prose, blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m[2], heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match[2])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return frozenset(seen)


def links(path: Path) -> list[tuple[int, str]]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    found = []
    for number, line in prose:
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match[1]))
    return found


def test_there_are_pages_and_links_to_check():
    assert len(PAGES) >= 10 and all(p.is_file() for p in PAGES)
    assert sum(len(links(p)) for p in PAGES) >= 30


def link_problems(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        where = f"{page_id(page)}:{number}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: no such file {page_id(dest)}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{where}: no heading with anchor #{anchor} in {page_id(dest)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


def test_the_link_checker_catches_what_it_should(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Will it fit? (`ft estimate`)\n\n## Step\n\n## Step\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#will-it-fit-ft-estimate) [ok](other.md#step-1) [ok](#page) [web](https://x.org/a#b)\n"
        "[gone](missing.md) [bad anchor](other.md#will-it-fit) `[code](not-a-link.md)`\n\n```\n[in a block](nowhere.md)\n```\n"
    )
    problems = link_problems(page)
    assert len(problems) == 2, problems
    assert "no such file" in problems[0] and "missing.md" in problems[0]
    assert "no heading with anchor #will-it-fit in" in problems[1]


def test_github_slugs():
    assert github_slug("Evaluate (`ft eval`)") == "evaluate-ft-eval"
    assert github_slug("Will it fit? (`ft estimate`)") == "will-it-fit-ft-estimate"
    assert github_slug("ft estimate accuracy (2026-11-23)") == "ft-estimate-accuracy-2026-11-23"
    assert github_slug("Backends: Unsloth and accelerate") == "backends-unsloth-and-accelerate"
    assert github_slug("During training: `eval.generate`") == "during-training-evalgenerate"


def commands_in(page: Path) -> list[tuple[int, list[str]]]:
    """Every `ft ...` command line in the page's fenced blocks: all lines of a shell block, `$ ` lines elsewhere.

    Continued lines (a trailing backslash) are joined; pipes, `&&` and `;` separate commands; environment
    assignments before `ft` are skipped; a `# comment` ends the line."""
    _, blocks = split_fences(page.read_text(encoding="utf-8"))
    found = []
    for info, lines in blocks:
        shell = info.split()[0] in SHELL_BLOCKS if info else False
        if info and not shell:
            continue  # yaml, python, text: not commands
        pending, start = "", 0
        for number, line in lines:
            stripped = line.strip()
            if not pending:
                if stripped.startswith("$ "):
                    stripped = stripped[2:]
                elif not shell:
                    continue
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            full, pending = pending + stripped, ""
            try:
                words = shlex.split(full, comments=True)
            except ValueError as exc:
                raise AssertionError(f"{page_id(page)}:{start}: cannot split {full!r}: {exc}") from None
            command: list[str] = []
            for word in [*words, "|"]:
                if word in {"|", "||", "&&", ";"}:
                    while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
                        command.pop(0)
                    if command and command[0] == "ft":
                        found.append((start, command[1:]))
                    command = []
                else:
                    command.append(word)
    return found


def resolve(words: list[str]):
    """The subcommand the words name, the words after its name, and its full name; root options are checked too."""
    command = ft_command()
    name = "ft"
    rest = list(words)
    while hasattr(command, "commands"):  # a group: config, models, ft itself
        while rest and rest[0].startswith("-"):
            check_option(command, rest.pop(0), name)
        if not rest:
            raise AssertionError(f"`{name}` without a subcommand")
        sub = command.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"`{name} {rest[0]}`: no such subcommand (known: {', '.join(sorted(command.commands))})")
        name = f"{name} {rest.pop(0)}"
        command = sub
    return command, rest, name


def option_table(command) -> dict:
    table = {"--help": None, "-h": None}
    for param in command.params:
        if param.param_type_name == "option":
            for opt in [*param.opts, *param.secondary_opts]:
                table[opt] = param
    return table


def check_option(command, word: str, name: str):
    option = word.split("=", 1)[0]
    table = option_table(command)
    if option not in table:
        raise AssertionError(f"`{name}` has no option {option} (it has {', '.join(sorted(o for o in table if o.startswith('--')))})")
    return table[option]


def check_command(words: list[str], keys: frozenset[str]) -> None:
    command, rest, name = resolve(words)
    takes_overrides = any(p.param_type_name == "argument" and p.name in {"overrides", "args"} for p in command.params)
    words_iter = iter(rest)
    for word in words_iter:
        if word == "--":
            break
        if word.startswith("-") and not re.match(r"^-\d", word):
            option = check_option(command, word, name)
            if option is not None and not option.is_flag and not option.count and "=" not in word:
                next(words_iter, None)  # the option's value
        elif takes_overrides and (match := OVERRIDE.match(word)):
            key = re.sub(r"\[\d*\]", "[]", match[1])
            if key not in keys:
                raise AssertionError(f"`{name}`: {match[1]} is not a config key (ft_cli/config/schema.py)")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_ft_example_names_a_real_command_options_and_config_keys(page: Path):
    keys = schema_keys()
    problems = []
    for number, words in commands_in(page):
        try:
            check_command(words, keys)
        except AssertionError as exc:
            problems.append(f"{page_id(page)}:{number}: ft {shlex.join(words)}\n    {exc}")
    assert not problems, "\n".join(problems)


def check_synopsis(code: str) -> None:
    """An inline `ft ...` span, often a synopsis (`ft merge ADAPTER_DIR [--dtype auto|fp32]`): the subcommand
    must exist and every option it spells must be that subcommand's; placeholders and values are not checked."""
    words = code.split()[1:]
    command, name = ft_command(), "ft"
    while hasattr(command, "commands"):
        while words and words[0].startswith("-"):
            check_option(command, words.pop(0), name)
        if not words or not re.match(r"^[a-z][a-z0-9-]*$", words[0]):
            return  # `ft COMMAND --help`, `ft --verbose`: nothing more to check
        sub = command.commands.get(words[0])
        if sub is None:
            raise AssertionError(f"`{name} {words[0]}`: no such subcommand (known: {', '.join(sorted(command.commands))})")
        name = f"{name} {words.pop(0)}"
        command = sub
    for option in re.findall(r"(?<![\w./=-])(--?[a-zA-Z][\w-]*)", " ".join(words)):
        check_option(command, option, name)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_inline_ft_synopsis_names_a_real_command_and_options(page: Path):
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    problems = []
    for number, line in prose:
        for span in INLINE_CODE.finditer(line):
            code = span[2].strip()
            if re.match(r"^ft (-|[a-z])", code):
                try:
                    check_synopsis(code)
                except AssertionError as exc:
                    problems.append(f"{page_id(page)}:{number}: `{code}`\n    {exc}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_should(tmp_path: Path):
    keys = schema_keys()
    check_command(["train", "run.yaml", "training.learning_rate=1e-4", "lora.r=32", "--dry-run"], keys)
    check_command(["--verbose", "config", "show", "run.yaml", "--sources"], keys)
    check_command(["merge", "out/run", "--no-verify", "-o", "out/m"], keys)
    check_command(["prepare", "a.json", "--map", "prompt=question", "-o", "x.jsonl"], keys)  # a value, not an override
    check_synopsis("ft launch CONFIG --nproc N [--launcher torchrun\\|accelerate] [key.sub=value ...]")
    with pytest.raises(AssertionError, match="has no option --nprocs"):
        check_synopsis("ft launch CONFIG --nprocs N")
    for bad, said in [
        (["trian", "run.yaml"], "no such subcommand"),
        (["train", "run.yaml", "--dryrun"], "has no option --dryrun"),
        (["train", "run.yaml", "training.learning_rat=1"], "not a config key"),
        (["config", "shwo", "run.yaml"], "no such subcommand"),
        (["merge", "out", "--dtype=bf16", "--max-shards", "2"], "has no option --max-shards"),
    ]:
        with pytest.raises(AssertionError, match=said):
            check_command(bad, keys)
    page = tmp_path / "p.md"
    page.write_text(
        "```bash\nOMP_NUM_THREADS=1 ft eval m --limit 2  # note\nft launch r.yaml --nproc 2 \\\n  --nnodes 2\n```\n"
        "```\n$ printf 'hi\\n' | ft chat out/m\nft launch: torchrun ...\n```\n```yaml\nft: no\n```\n"
    )
    assert commands_in(page) == [(2, ["eval", "m", "--limit", "2"]), (3, ["launch", "r.yaml", "--nproc", "2", "--nnodes", "2"]), (7, ["chat", "out/m"])]


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 252
    linked = {target.split("#")[0] for _, target in links(REPO / "README.md")}
    missing = [page_id(p) for p in PAGES[1:] if page_id(p) not in linked]
    assert not missing, f"README.md links no page of {missing}"
