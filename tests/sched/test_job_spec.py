from __future__ import annotations

import pytest

from gpufleet.sched.job import JobSpecError, parse_job

K8S = """
apiVersion: batch/v1
kind: Job
metadata:
  name: train-densenet
  namespace: vision
  annotations: {model_name: "densenet121", data_size: "20", epoch: "100"}
spec:
  template:
    spec:
      containers:
        - name: train
          image: pytorch
          command: ["python", "train.py"]
          resources: {limits: {nvidia.com/gpu: 2}}
"""


def test_k8s_job_annotations() -> None:
    spec = parse_job(K8S)
    assert spec.model_name == "densenet121"
    assert spec.epochs == 100
    assert spec.data_size_bytes == 20 * 10**9
    assert spec.gpus == 2
    assert spec.command == ("python", "train.py")
    assert spec.user == "vision"


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ('epoch: "100"', 'metadata.annotations.epoch: must be a positive integer, got "abc"'),
        (
            'data_size: "20"',
            'metadata.annotations.data_size: must be a non-negative number, got "x"',
        ),
    ],
)
def test_k8s_bad_annotation_names_the_field(replace: str, message: str) -> None:
    bad = 'epoch: "abc"' if "epoch" in replace else 'data_size: "x"'
    with pytest.raises(JobSpecError) as err:
        parse_job(K8S.replace(replace, bad))
    assert str(err.value) == message


def test_k8s_missing_annotation() -> None:
    with pytest.raises(JobSpecError, match=r"^metadata.annotations.epoch: is required"):
        parse_job(K8S.replace(', epoch: "100"', ""))
    with pytest.raises(JobSpecError, match=r"^metadata.annotations.model_name: is required"):
        parse_job(K8S.replace('model_name: "densenet121", ', ""))


def test_k8s_wrong_kind_and_gpu() -> None:
    with pytest.raises(JobSpecError, match=r"^kind: must be \"Job\""):
        parse_job(K8S.replace("kind: Job", "kind: Pod"))
    with pytest.raises(JobSpecError, match=r"nvidia.com/gpu: must be a whole number"):
        parse_job(K8S.replace("nvidia.com/gpu: 2", "nvidia.com/gpu: 1.5"))


def test_plain_spec() -> None:
    spec = parse_job(
        '{"name": "a", "user": "ann", "gpus": 0.5, "model_name": "ResNet-18",'
        ' "gpu_memory": "40GB", "epochs": 3, "data_size_gb": 1.5,'
        ' "data_location": "gpu-07", "priority": 2, "deadline": "2024-01-01T00:00"}'
    )
    assert spec.gpus == 0.5 and spec.gpu_memory_bytes == 40 * 10**9
    assert spec.data_size_bytes == 1_500_000_000 and spec.priority == 2


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("{user: a, model_name: m, epochs: 1}", "name"),
        ("{name: a, user: a, model_name: m, epochs: 0}", "epochs"),
        ("{name: a, user: a, model_name: m, epochs: 1, gpus: -1}", "gpus"),
        ("{name: a, user: a, model_name: m, epochs: 1, gpu_memory: lots}", "gpu_memory"),
        ("{name: a, user: a, model_name: m, epochs: 1, colour: red}", "colour"),
        ("{name: a, user: a, model_name: m, epochs: 1, priority: high}", "priority"),
    ],
)
def test_plain_errors_name_the_field(doc: str, field: str) -> None:
    with pytest.raises(JobSpecError) as err:
        parse_job(doc)
    assert str(err.value).startswith(f"{field}:")


def test_a_minimal_plain_spec_is_name_user_and_command() -> None:
    """What the model trains and for how long are optional (the predictor learns without them)."""
    spec = parse_job("name: smoke\nuser: alice\ncommand: python train.py\n")
    assert (spec.gpus, spec.model_name, spec.epochs, spec.steps) == (1.0, "", None, None)
    assert spec.command == ("python", "train.py")


PLAIN = "{name: a, user: a, model_name: m, epochs: 1}"


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True), ("", True)])
def test_preemptible_is_a_boolean_defaulting_to_true(value: str, expected: bool) -> None:
    doc = PLAIN if not value else PLAIN.replace("}", f", preemptible: {value}}}")
    assert parse_job(doc).preemptible is expected
    yaml_doc = "name: a\nuser: a\nmodel_name: m\nepochs: 1\n" + (
        f"preemptible: {value}\n" if value else ""
    )
    assert parse_job(yaml_doc).preemptible is expected


@pytest.mark.parametrize("value", ['"no"', "no", "off", "1", "0", '"false"', "null"])
def test_preemptible_rejects_what_is_not_a_boolean(value: str) -> None:
    # (YAML 1.1 would read a bare no/off as false: the spec reads YAML 1.2's booleans only)
    with pytest.raises(JobSpecError, match=r"^preemptible: must be true or false, got"):
        parse_job(PLAIN.replace("}", f", preemptible: {value}}}"))


@pytest.mark.parametrize(("value", "expected"), [('"false"', False), ('"true"', True)])
def test_k8s_preemptible_annotation(value: str, expected: bool) -> None:
    doc = K8S.replace('epoch: "100"', f'epoch: "100", gpufleet.io/preemptible: {value}')
    assert parse_job(doc).preemptible is expected
    assert parse_job(K8S).preemptible is True


@pytest.mark.parametrize("value", ['"no"', '"1"', "1"])
def test_k8s_preemptible_annotation_names_the_field(value: str) -> None:
    doc = K8S.replace('epoch: "100"', f'epoch: "100", gpufleet.io/preemptible: {value}')
    with pytest.raises(
        JobSpecError, match=r"^metadata.annotations.gpufleet.io/preemptible: must be true or false"
    ):
        parse_job(doc)


def test_the_yaml_reader_keeps_yes_and_no_as_text() -> None:
    spec = parse_job("name: no\nuser: yes\nmodel_name: on\nepochs: 1\n")
    assert (spec.name, spec.user, spec.model_name) == ("no", "yes", "on")
