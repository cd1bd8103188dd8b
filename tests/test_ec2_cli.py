"""``bigactor ec2 ls|cleanup|types`` as a user runs them: a subprocess whose AWS environment
points at moto's EC2 server on loopback (fake credentials; nothing can reach AWS)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bigactor.systems.ec2 import EC2Config, launch_tags

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

REGION = "us-west-2"


@pytest.fixture
def env(moto_url: str, tmp_path: pathlib.Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ENDPOINT_URL_EC2=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    return out


def _bigactor(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bigactor", "ec2", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _launch(moto_url: str, user: str, cluster: str, n: int) -> list[str]:
    """Instances tagged as the EC2 system tags them (started directly: the CLI is under test)."""
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    tags = launch_tags(EC2Config(user=user), cluster, ["prog.py"])
    reply = ec2.run_instances(
        ImageId="ami-12c6146b",
        InstanceType="m5.large",
        MinCount=n,
        MaxCount=n,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return [i["InstanceId"] for i in reply["Instances"]]


@pytest.mark.slow
def test_ls_lists_own_instances_and_all_users(moto_url: str, env: dict[str, str]) -> None:
    """ls shows the user's instances of a cluster; --all-users shows everybody's."""
    mine = _launch(moto_url, "carol", "c-cli-ls", 2)
    theirs = _launch(moto_url, "dave", "c-cli-ls", 1)
    result = _bigactor(env, "ls", "--user", "carol", "--cluster", "c-cli-ls")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["INSTANCE", "STATE", "TYPE", "CLUSTER", "USER"]
    assert sorted(r.split()[0] for r in rows) == sorted(mine)
    assert all("carol:prog.py (bigactor)" in r for r in rows)
    result = _bigactor(env, "ls", "--all-users", "--cluster", "c-cli-ls")
    assert sorted(r.split()[0] for r in result.stdout.splitlines()[1:]) == sorted(mine + theirs)
    result = _bigactor(env, "ls", "--user", "nobody")
    assert (result.returncode, result.stdout) == (0, "")
    assert "no bigactor instances for nobody in us-west-2" in result.stderr


@pytest.mark.slow
def test_cleanup_asks_then_terminates(moto_url: str, env: dict[str, str]) -> None:
    """cleanup asks first and terminates nothing on "n"; with --yes it terminates the cluster's
    instances, and only those."""
    doomed = _launch(moto_url, "erin", "c-cli-clean", 2)
    spared = _launch(moto_url, "erin", "c-cli-other", 1)
    result = _bigactor(env, "cleanup", "--user", "erin", "--cluster", "c-cli-clean", stdin="n\n")
    assert result.returncode == 1
    assert "terminate these 2 instance(s) in us-west-2? [y/N]" in result.stdout
    assert "nothing terminated" in result.stderr
    result = _bigactor(env, "cleanup", "--user", "erin", "--cluster", "c-cli-clean", "--yes")
    assert result.returncode == 0, result.stderr
    assert "terminated 2 instance(s)" in result.stderr
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    reply = ec2.describe_instances(InstanceIds=doomed + spared)
    states = {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}
    assert states == {doomed[0]: "terminated", doomed[1]: "terminated", spared[0]: "running"}
    result = _bigactor(env, "cleanup", "--user", "erin", "--cluster", "c-cli-clean", "--yes")
    assert result.returncode == 0
    assert "no bigactor instances of cluster c-cli-clean" in result.stderr


def test_types_shows_the_table(env: dict[str, str]) -> None:
    """types prints the shapes and, with --region, the price there; a typo is a clear error."""
    result = _bigactor(env, "types", "m5.large", "m6g.xlarge", "--region", "us-east-1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["m5.large", "2", "8", "GiB", "x86_64", "yes", "yes", "0.0960"]
    assert lines[2].split()[:5] == ["m6g.xlarge", "4", "16", "GiB", "arm64"]
    result = _bigactor(env, "types", "m5.lage")
    assert result.returncode == 1
    assert "did you mean m5.large" in result.stderr


@pytest.mark.slow
def test_types_rebuild_writes_the_cache(env: dict[str, str]) -> None:
    """types --rebuild (without prices) writes a table the next command reads."""
    result = _bigactor(env, "types", "--rebuild", "--regions", REGION, "--no-prices")
    assert result.returncode == 0, result.stderr
    path = pathlib.Path(env["XDG_CACHE_HOME"], "bigactor", "ec2-instance-types.json")
    data = json.loads(path.read_text())
    assert data["types"]["m5.large"]["prices"] == {REGION: None}
    assert data["types"]["m5.large"]["vcpus"] == 2
    result = _bigactor(env, "types", "m5.large", "--region", REGION)
    assert result.stdout.splitlines()[1].split()[-1] == "?"
    assert "DescribeInstanceTypes" in result.stderr


def test_importing_bigactor_and_the_cli_imports_no_boto3() -> None:
    """boto3 is imported only when an EC2 call is made: not by bigactor, its systems, the EC2
    package or the command line."""
    code = (
        "import sys, bigactor, bigactor.systems, bigactor.systems.ec2, bigactor.__main__\n"
        "from bigactor.systems.ec2 import EC2Config; EC2Config()\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
