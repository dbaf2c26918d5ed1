"""A toy family (tests/toy_family_checks.py: a Legendre KAN layer and its table entry, nothing else) works with
every part of the package. It registers a family for good, so its checks run in a process of their own."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_a_family_defined_in_its_own_file_works_everywhere():
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(HERE / 'toy_family_checks.py')],
        cwd=HERE.parent, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert '\n6 passed' in result.stdout
