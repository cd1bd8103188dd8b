"""The EC2 system's error: :class:`EC2Error`, raised at the boundary between boto3 and bigactor."""

from __future__ import annotations

from typing import ClassVar

from ..._errors import BigActorError


class EC2Error(BigActorError):
    """An EC2 operation failed; ``operation`` is the API call (or step), ``code`` AWS's error
    code (or bigactor's name for the condition), ``message`` what happened and what to do."""

    retriable: ClassVar[bool] = False

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(operation, code, message)
        self.operation = operation
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"EC2 {self.operation}: {self.code}: {self.message}"
