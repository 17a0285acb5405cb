"""JSON schemas for the YAML data files. Unknown keys are errors: a typo in a
scenario must not silently disable a check."""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9.+_-]*$"}
_STR_LIST = {"type": "array", "items": {"type": "string"}}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 7200}


def _one_of_keys(*keys: str) -> dict[str, Any]:
    """An object with exactly one of `keys`, whose value is a string."""
    return {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {k: {"type": "string"} for k in keys},
    }


TARGET: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "source", "fragments"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string"},
        "source": _one_of_keys("debian", "git", "tarball"),
        "series": _one_of_keys("mbox", "dir", "b4"),
        "fragments": {**_STR_LIST, "minItems": 1},
        "toolchain": {"enum": ["gcc", "llvm"]},
        "cmdline": _STR_LIST,
        "known_gaps": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["step", "reason", "why"],
                "properties": {
                    "step": {"type": "string", "minLength": 1},
                    "reason": {"type": "string", "minLength": 1},
                    "why": {"type": "string", "minLength": 1},
                },
            },
        },
        "build_dir": _NAME,
    },
}

PROFILE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "machine", "iommu", "features"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string"},
        "machine": {"type": "string", "pattern": "^virt(-[0-9.]+)?$"},
        "iommu": {"enum": ["smmuv3", "virtio-iommu", "none"]},
        "smmu_stage": {"enum": ["1", "2", "nested"]},
        "cpu": {"type": "string"},
        "smp": {"type": "integer", "minimum": 1, "maximum": 8},
        "memory_mb": {"type": "integer", "minimum": 128, "maximum": 8192},
        "scratch_disk_mb": {"type": "integer", "minimum": 0, "maximum": 4096},
        "kvm_mode": {"enum": ["protected", "nvhe", "default"]},
        "features": _STR_LIST,
        "cmdline": _STR_LIST,
        "extra_args": _STR_LIST,
        "iommu_options": {"type": "array", "items": {"type": "string", "pattern": "^[a-z][a-z0-9-]*=[^,]+$"}},
        "expect": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
    },
}

_EVENT_EXPECTATION = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["signature"],
            "properties": {
                "signature": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                },
                "min_count": {"type": "integer", "minimum": 0},
            },
        },
    ]
}

STEP: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "requires": _STR_LIST,
        "transport": {"enum": ["serial", "ssh"]},
        "run": {"type": "string"},
        "timeout_s": _TIMEOUT,
        "expect_status": {"type": "integer"},
        "expect_output": {"type": "string"},
        "forbid_output": {"type": "string"},
        "expect_events": {"type": "array", "items": _EVENT_EXPECTATION},
        "forbid_events": _STR_LIST,
        "events_since": {"enum": ["boot", "scenario", "step"]},
        "expect_ktap": {"type": "boolean"},
        "fail_reason": {"type": "string"},
        "essential": {"type": "boolean"},
        "fault_report_window_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
        "hang_probe_s": _TIMEOUT,
        "hang_timeout_s": _TIMEOUT,
        "dma_fuzz": {
            "type": "object",
            "additionalProperties": False,
            "required": ["seeds"],
            "properties": {
                "seeds": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                "length": {"type": "integer", "minimum": 1, "maximum": 512},
                "backend": {"enum": ["type1", "iommufd"]},
                "minimize_budget": {"type": "integer", "minimum": 0, "maximum": 500},
            },
        },
        "kselftest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["suite", "tests"],
            "properties": {
                "suite": {"enum": ["kvm", "iommu"]},
                "tests": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_./-]*$"},
                },
                "timeout_s": _TIMEOUT,
            },
        },
        "qmp": {
            "type": "object",
            "additionalProperties": False,
            "required": ["command"],
            "properties": {
                "command": {"type": "string"},
                "arguments": {"type": "object"},
                "wait_event": {"type": "string"},
            },
        },
    },
}

SCENARIO: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}},
        "name": _NAME,
        "description": {"type": "string"},
        "requires": _STR_LIST,
        "timeout_s": _TIMEOUT,
        "forbid_events": _STR_LIST,
        "check_boot_log": {"type": "boolean"},
        "check_capabilities": {"type": "boolean"},
        "steps": {"type": "array", "minItems": 1, "items": STEP},
    },
}

KNOWN_FAILURES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["known_failures"],
    "properties": {
        "known_failures": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["suite", "case", "failure", "targets", "reason"],
                "properties": {
                    "suite": {"enum": ["kvm", "iommu"]},
                    "case": {"type": "string", "minLength": 1},
                    "failure": {"type": "string", "minLength": 1},
                    "targets": {**_STR_LIST, "minItems": 1},
                    "profiles": {**_STR_LIST, "minItems": 1},
                    "reason": {"type": "string", "minLength": 10},
                },
            },
        }
    },
}
