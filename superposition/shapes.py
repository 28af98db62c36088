"""jaxtyping-style shape annotations without the dependency: `Float[Tensor, "instance feature"]`.

They document shapes in signatures; nothing checks them at run time.
"""

from typing import Annotated, Any


class _DtypeAnnotation:
    def __init__(self, dtype: str):
        self.dtype = dtype

    def __getitem__(self, item: tuple[Any, str]) -> Any:
        array_type, dims = item
        return Annotated[array_type, self.dtype, dims]


Float = _DtypeAnnotation("float")
Int = _DtypeAnnotation("int")
Bool = _DtypeAnnotation("bool")
