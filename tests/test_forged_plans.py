"""Plans forged with valid, recomputed checksums: every one is refused by the loader with one line
naming the file (exit 5), before anything runs it."""

import pytest

from edbc.errors import EXIT_ARTIFACT, ArtifactError
from edbc.plan import load_plan

from .forge import HEADER_FORGERIES, PLAN_FORGERIES, base_plan_bytes, forge_plan
from .test_cli import edbc, one_line_error


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_plan_bytes(str(tmp_path_factory.mktemp("plan") / "base.plan"))


def test_the_base_plan_loads(base, tmp_path):
    path = tmp_path / "p.plan"
    path.write_bytes(base)
    assert load_plan(path).num_instances == 4


@pytest.mark.parametrize("name", [*PLAN_FORGERIES, *HEADER_FORGERIES])
def test_a_forged_plan_is_refused(base, tmp_path, name):
    data, message = forge_plan(base, name)
    path = tmp_path / "forged.plan"
    path.write_bytes(data)
    with pytest.raises(ArtifactError) as e:
        load_plan(path)
    text = str(e.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text, text


@pytest.mark.parametrize("name", ["token_id_too_large", "types_a_string", "exec_graph_not_the_lowering"])
@pytest.mark.parametrize("command", ["run", "inspect"])
def test_the_cli_answers_a_forged_plan_in_one_line(base, tmp_path, name, command):
    data, message = forge_plan(base, name)
    path = tmp_path / "forged.plan"
    path.write_bytes(data)
    one_line_error(edbc(command, path), EXIT_ARTIFACT, f"Error: {path}", message)
