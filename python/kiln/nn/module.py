"""Module: a container of parameters, buffers and submodules, as torch.nn.Module."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np

from .._graph import Error, Parameter, Tensor


class Module:
    """Base class of layers. Assigning a Parameter or a Module to an attribute registers it;
    ``register_buffer`` registers non-trainable state (batch-norm running statistics).
    Training and inference differ by how a function is compiled (``kn.function(...,
    training=False)``), not by a flag on the module."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise Error(
                f"{type(self).__name__}.__init__ must call super().__init__() before setting attributes"
            )
        if name in self._buffers:  # reassigning a buffer keeps it a buffer
            self._buffers[name] = value
        else:
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            if isinstance(value, Parameter):
                self._parameters[name] = value
            elif isinstance(value, Module):
                self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Parameter | None) -> None:
        """Registers non-trainable state, saved in state_dict (e.g. running statistics)."""
        self._parameters.pop(name, None)
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal ----

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def _named(self, tables: tuple[str, ...], prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, entry) of the given tables ("_parameters", "_buffers") of every module."""
        for mod_name, m in self.named_modules(prefix):
            for table in tables:
                for name, v in getattr(m, table).items():
                    if v is not None:
                        yield (f"{mod_name}.{name}" if mod_name else name), v

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) of every trainable parameter, as torch names them."""
        yield from self._named(("_parameters",), prefix)

    def parameters(self) -> list[Parameter]:
        """The trainable parameters, each once."""
        seen, out = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        yield from self._named(("_buffers",), prefix)

    def buffers(self) -> list[Parameter]:
        return [b for _, b in self.named_buffers()]

    # ---- state ----

    def _state_items(self) -> list[tuple[str, Parameter]]:
        return list(self._named(("_parameters", "_buffers")))

    def state_dict(self) -> OrderedDict:
        """{dotted name: numpy array copy} of parameters and buffers, with PyTorch's key names."""
        return OrderedDict((k, v.numpy()) for k, v in self._state_items())

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Loads arrays by key (a PyTorch state_dict converted to numpy works). With strict, a
        missing or unexpected key is an error (torch's num_batches_tracked is accepted)."""
        own = dict(self._state_items())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
        if strict and (missing or unexpected):
            raise Error(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for k, v in state.items():
            if k not in own:
                continue
            arr = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            if tuple(arr.shape) != tuple(own[k].shape):
                raise Error(f"load_state_dict: '{k}' has shape {tuple(arr.shape)}, the model {own[k].shape}")
            own[k].assign(arr)

    # ---- display ----

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            lines[0] = lines[0].rstrip("(") + "(" if not self.extra_repr() else lines[0]
            for name, m in self._modules.items():
                child = repr(m).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


class Sequential(Module):
    """Modules applied in order; submodules are named "0", "1", ... (torch's keys)."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise Error(f"Sequential: argument {i} is a {type(m).__name__}, not a kn.nn.Module")
            setattr(self, str(i), m)

    def forward(self, x: Tensor) -> Tensor:
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleList(Module):
    """A list of modules, registered as "0", "1", ..."""

    def __init__(self, modules=()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> ModuleList:
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
