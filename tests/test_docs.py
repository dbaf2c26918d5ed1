"""README.md, docs/*.md, CI and train_configs stay true: generated tables, the CI command, the commands and links
of every page (train_configs/*.yaml against train.py: tests/test_train_configs.py)."""
import re
import shlex
from pathlib import Path

import pytest
import timm

import timm_kan  # noqa: F401
from timm_kan.tables import block_files, registry_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()
MAX_README_LINES = 250


def _pages():
    """README.md and the docs pages: the files whose generated blocks `timm-kan models --update-readme` rewrites
    (found when a test runs, so a page added since import counts)."""
    return block_files(ROOT / 'README.md')


def _docs_pages():
    return sorted((ROOT / 'docs').glob('*.md'))


def _blocks(name: str):
    """Every ``<!-- NAME:start -->`` block of README.md and docs/*.md, stripped; at least one must exist."""
    found = [m.group(1).strip() for page in _pages()
             for m in re.finditer(rf'<!-- {name}:start -->\n(.*?)<!-- {name}:end -->', page.read_text(), re.S)]
    assert found, f'no <!-- {name}:start --> block in README.md or docs/*.md'
    return found


def _block(name: str) -> str:
    """The block's content, which every copy of it must share."""
    found = _blocks(name)
    assert len(set(found)) == 1, f'the copies of block {name} differ'
    return found[0]


def _without_fences(text: str) -> str:
    return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


def _without_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code (neither holds links)."""
    return re.sub(r'`[^`\n]*`', '', _without_fences(text))


def _links(text: str):
    return re.findall(r'!?\[[^\]]*\]\(([^)\s]+)\)', _without_code(text))


def _anchors(path: Path):
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces to hyphens."""
    anchors, seen = set(), {}
    for heading in re.findall(r'^#{1,6} +(.+?) *#* *$', _without_fences(path.read_text()).replace('`', ''), re.M):
        slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
        anchors.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _bash_commands(page: Path):
    """Each command line of the page's ```bash blocks: continuations joined, ``&&`` chains split, comments
    dropped, words as the shell splits them."""
    for block in re.findall(r'^```bash\n(.*?)^```', page.read_text(), re.S | re.M):
        for line in block.replace('\\\n', ' ').splitlines():
            for part in line.split('&&'):
                words = shlex.split(part, comments=True)
                if words:
                    yield words


def test_ci_runs_the_readme_test_command():
    ci_commands = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines() if 'pip install' in line]
    assert len(ci_commands) == 1
    assert f'```bash\n{ci_commands[0]}\n```' in README
    assert 'pytest' in ci_commands[0]


def test_readme_first_command_runs_compare():
    first = re.search(r'```bash\n(.*?)\n```', README).group(1)
    assert first.endswith('timm-kan compare') and 'pip install -e .' in first


def test_readme_is_a_landing_page():
    assert len(README.splitlines()) <= MAX_README_LINES, \
        f'README.md has {len(README.splitlines())} lines; move the detail into a docs/ page and link it'


def test_readme_links_every_docs_page():
    linked = {(ROOT / link.split('#', 1)[0]).resolve() for link in _links(README)}
    missing = [page.name for page in _docs_pages() if page.resolve() not in linked]
    assert not missing, f'docs pages README.md does not link: {missing}'


@pytest.mark.parametrize('page', ['README.md', *[f'docs/{p.name}' for p in sorted((ROOT / 'docs').glob('*.md'))]])
def test_relative_links_point_to_existing_files(page):
    path = ROOT / page
    broken = []
    for link in _links(path.read_text()):
        if re.match(r'[a-z][a-z0-9+.-]*:', link):  # https:, mailto:
            continue
        target, _, anchor = link.partition('#')
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(link)
        elif anchor and file.suffix == '.md' and anchor not in _anchors(file):
            broken.append(f'{link} (no such heading)')
    assert not broken, f'{page}: broken links {broken}'


def test_every_page_command_is_a_real_command():
    """Every `timm-kan ...` line in the bash blocks of README.md and docs/*.md parses with the real CLI and names
    registered models; every train.py config it names exists."""
    from timm_kan.cli import build_parser

    checked = 0
    for page in _pages():
        for words in _bash_commands(page):
            if words[0] == 'timm-kan':
                argv = words[1:]
            elif 'timm_kan.cli' in words:  # torchrun ... -m timm_kan.cli compare ...
                argv = words[words.index('timm_kan.cli') + 1:]
            else:
                for config in (w for w in words if w.endswith('.yaml') and 'train_configs/' in w):
                    assert (ROOT / 'train_configs' / Path(config).name).is_file(), f'{page.name}: {config}'
                continue
            try:
                args = build_parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f'{page.name}: timm-kan {" ".join(argv)} does not parse')
            names = list(getattr(args, 'models', None) or []) + [getattr(args, 'model', None) or 'vit_tiny_patch16_224']
            unknown = [n for n in names if not timm.is_model(n)]
            assert not unknown, f'{page.name}: unknown models {unknown} in timm-kan {" ".join(argv)}'
            checked += 1
    assert checked >= 5


def test_readme_model_table_is_the_generated_one():
    assert _block('models-table') == registry_table()


def test_docs_option_table_is_the_generated_one():
    from timm_kan.tables import options_table
    assert _block('options-table') == options_table()


def test_readme_mission_table_is_the_generated_one():
    from timm_kan.tables import mission_table
    assert _block('mission-table') == mission_table()


def test_readme_performance_section_is_the_generated_one():
    from timm_kan.tables import performance_section
    assert _block('performance') == performance_section()


def test_readme_cpu_performance_section_is_the_generated_one():
    from timm_kan.tables import cpu_performance_section
    assert _block('cpu-performance') == cpu_performance_section(ROOT / 'docs' / 'bench' / 'cpu-vit-t.json').strip()


def test_readme_speed_and_memory_section_is_the_generated_one():
    from timm_kan.tables import speed_memory_section
    assert _block('speed-memory') == speed_memory_section(ROOT / 'docs' / 'bench' / 'cpu-vit-t.json').strip()


@pytest.mark.parametrize('name', ['mnist5k', 'fashion10k'])
def test_readme_results_are_the_generated_ones(name):
    from timm_kan.tables import results_section
    table = _block(f'results-{name}')
    assert table == results_section(ROOT / 'docs' / 'results' / f'{name}.json').strip()
    for model in ('vit_tiny', 'chebykan_vit_tiny', 'kan_vit_tiny', 'rbfkan_vit_tiny', 'grkan_vit_tiny'):
        assert f'| {model}_patch16_224 |' in table and '| 3 |' in table


def test_readme_headline_is_a_generated_results_table():
    names = re.findall(r'<!-- (results-[\w-]+):start -->', README)
    assert len(names) == 1, f'README.md shows one Results table, found {names}'


def _copy_pages(tmp_path: Path) -> Path:
    """README.md and docs/*.md copied into tmp_path; returns the copy of README.md."""
    (tmp_path / 'docs').mkdir()
    for page in _pages():
        (tmp_path / page.relative_to(ROOT)).write_text(page.read_text())
    return tmp_path / 'README.md'


def test_update_readme_writes_a_bench_report(tmp_path):
    from timm_kan.bench import main as bench_main
    from timm_kan.tables import update_readme
    bench = tmp_path / 'bench.json'
    bench_main(['--tokens', '16', '--dim', '8', '--hidden', '16', '--reps', '1', '--warmup', '0',
                '--variants', 'chebyshev reference', '--json', str(bench)])
    readme = _copy_pages(tmp_path)
    update_readme(readme, bench_results=bench)
    texts = [page.read_text() for page in block_files(readme)]
    sections = [m for text in texts for m in re.findall(r'<!-- performance:start -->\n(.*?)<!-- performance:end -->',
                                                        text, re.S)]
    assert len(sections) == 1
    section = sections[0]
    assert section.startswith('Measured ') and '| chebyshev reference |' in section
    assert '`timm-kan bench --tokens 16 --dim 8' in section
    assert 'Not measured yet' not in section


def test_update_readme_rewrites_blocks_in_readme_and_docs(tmp_path):
    """The CLI's `--update-readme README.md` reaches every page's blocks: each one regenerated to what it is
    today, nothing else touched; a block that no page holds is an error and writes nothing."""
    from timm_kan.cli import main
    from timm_kan.tables import update_readme
    readme = _copy_pages(tmp_path)
    before = {page.name: page.read_text() for page in block_files(readme)}
    regenerated = ('models-table|options-table|mission-table|performance|cpu-performance|speed-memory|'
                   'results-mnist5k|results-fashion10k')
    for page in block_files(readme):  # spoil every block the command below regenerates
        text = re.sub(rf'(<!-- ({regenerated}):start -->\n).*?(<!-- \2:end -->)', r'\1stale\n\3', page.read_text(),
                      flags=re.S)
        page.write_text(text)
    assert sum(page.read_text().count('\nstale\n') for page in block_files(readme)) >= 8
    results = [f'{name}=' + str(ROOT / 'docs' / 'results' / f'{name}.json') for name in ('mnist5k', 'fashion10k')]
    assert main(['models', '--update-readme', str(readme), '--cpu-bench-results',
                 str(ROOT / 'docs' / 'bench' / 'cpu-vit-t.json'), '--results', *results]) == 0
    assert {page.name: page.read_text() for page in block_files(readme)} == before
    (tmp_path / 'docs' / 'results.md').write_text(before['results.md'].replace('results-fashion10k:', 'x:'))
    snapshot = {page: page.read_text() for page in block_files(readme)}
    with pytest.raises(ValueError, match='results-fashion10k'):
        update_readme(readme, results={'mnist5k': ROOT / 'docs' / 'results' / 'mnist5k.json',
                                       'fashion10k': ROOT / 'docs' / 'results' / 'fashion10k.json'})
    assert {page: page.read_text() for page in block_files(readme)} == snapshot


def test_readme_compare_table_was_pasted():
    table = _block('compare-table')
    for name in ('vit_tiny_patch16_224', 'chebykan_vit_tiny_patch16_224', 'kan_vit_tiny_patch16_224'):
        assert f'| {name} |' in table


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'kan_vit_tiny_patch16_224', 'grkan_vit_tiny_patch16_224'])
def test_table_counts_from_two_shallow_builds_equal_a_full_build(name):
    """The model tables count each model from builds of depth 1 and 2 (its blocks are alike): exactly a full build's
    parameters, by part, and FLOPs."""
    from timm_kan.accounting import count_flops, count_parameters
    from timm_kan.tables import counts_at_depth

    full = timm.create_model(name, num_classes=1000, device='meta')
    params, flops = counts_at_depth(name, 12)
    assert params == count_parameters(full) and flops == count_flops(full)
    assert flops > counts_at_depth(name, 11)[1]
