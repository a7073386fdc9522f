"""The one authority on names: what a spec may call a layer, a parameter or a block class.

Names become Python identifiers in generated code and keys in state_dicts, so they are
checked once here rather than escaped later: ASCII identifiers only (Python would NFKC-fold
fullwidth letters), no keywords, no dunders, nothing the generated code or nn.Module uses itself.
"""

from __future__ import annotations

import keyword

from resnetc.ops import REGISTRY

# Names the generated module binds itself, or that nn.Module defines: a layer called
# `forward` or `training` would silently break the model.
_TEMPLATE_NAMES = frozenset(
    {
        "self",
        "x",
        "out",
        "torch",
        "nn",
        "F",
        "input",
        "in_channels",
        "num_classes",
        "super",
        "int",
        "range",
        "bool",
        "init_weights",
        "zero_init_residual",
        "logits",
    }  # logits: the ONNX graph's output
)
# Class names the generated module defines or imports itself.
RESERVED_CLASS_NAMES = frozenset(
    {"F", "ZeroPadShortcut", *(op.torch_helper_name for op in REGISTRY.values() if op.torch_helper_name)}
)
_MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination",
        "add_module",
        "apply",
        "bfloat16",
        "buffers",
        "call_super_init",
        "children",
        "compile",
        "cpu",
        "cuda",
        "double",
        "dump_patches",
        "eval",
        "extra_repr",
        "float",
        "forward",
        "get_buffer",
        "get_extra_state",
        "get_parameter",
        "get_submodule",
        "half",
        "ipu",
        "load_state_dict",
        "modules",
        "mtia",
        "named_buffers",
        "named_children",
        "named_modules",
        "named_parameters",
        "parameters",
        "register_backward_hook",
        "register_buffer",
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook",
        "register_module",
        "register_parameter",
        "register_state_dict_post_hook",
        "register_state_dict_pre_hook",
        "requires_grad_",
        "set_extra_state",
        "set_submodule",
        "share_memory",
        "state_dict",
        "to",
        "to_empty",
        "train",
        "training",
        "type",
        "xpu",
        "zero_grad",
    }
)
# Layer names become attributes of a module and local variables of `forward`.
RESERVED_LAYER_NAMES = _TEMPLATE_NAMES | _MODULE_ATTRIBUTES
# Block parameters and lets are arguments and locals of `__init__`: they may not shadow what it uses
# (and, to keep one rule for every name, not nn.Module's attributes either).
RESERVED_PARAM_NAMES = (_TEMPLATE_NAMES - {"x", "out", "input"}) | _MODULE_ATTRIBUTES
MAX_NAME_LENGTH = 64


def identifier_problem(name: str, reserved: frozenset[str] = RESERVED_LAYER_NAMES) -> str | None:
    """Why `name` cannot be a layer (or, with RESERVED_PARAM_NAMES, a parameter) name; None when it can."""
    if not name:
        return "a name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"a name is at most {MAX_NAME_LENGTH} characters"
    if not name.isascii() or not name.isidentifier():
        return f"{name!r} is not a valid name: use ASCII letters, digits and _, not starting with a digit"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"{name!r} is a Python keyword"
    if name.startswith("_"):
        return f"{name!r} starts with an underscore, which generated code reserves"
    if name[0].isupper():
        # Capitalised names are for classes; keeping the two apart means they never collide.
        return f"{name!r} starts with a capital letter, which is reserved for class names"
    if name in reserved:
        return f"{name!r} is reserved (generated code or torch.nn.Module uses it)"
    return None


def class_name_problem(name: str) -> str | None:
    if not name.isascii() or not name.isidentifier() or keyword.iskeyword(name) or len(name) > MAX_NAME_LENGTH:
        return f"{name!r} is not a valid class name: use ASCII letters, digits and _"
    if not name[0].isupper():
        return f"class name {name!r} must start with a capital letter"
    if name in RESERVED_CLASS_NAMES:
        return f"class name {name!r} is reserved (the generated module uses it)"
    return None


def default_class_name(block: str) -> str:
    """`bottleneck` -> `Bottleneck`, `se_bottleneck` -> `SeBottleneck`."""
    return "".join(part[:1].upper() + part[1:] for part in block.split("_") if part)


def group_member(name: str) -> tuple[str, int] | None:
    """`paths.0` -> ("paths", 0): a layer that is member 0 of the module group `paths` (an nn.ModuleList)."""
    group, dot, index = name.partition(".")
    if not dot or not index.isdigit() or not index.isascii() or (len(index) > 1 and index[0] == "0"):
        return None
    return group, int(index)


def python_name(name: str) -> str:
    """The local variable of a layer's value in forward: `paths.0` -> `paths_0`."""
    return name.replace(".", "_")
