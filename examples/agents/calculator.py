"""A small agent task for `ft train` with GRPO: arithmetic done with tool calls.

Two ways to use it (docs/agents.md):
- plain tools: `grpo.tools: [examples/agents/calculator.py:add, examples/agents/calculator.py:multiply]`
  with a reward on the final answer (configs/grpo-tools.yaml);
- an environment: `grpo.environment: examples/agents/calculator.py:Calculator`, whose methods are the
  tools and whose get_reward() scores each rollout exactly from what the model submitted
  (configs/grpo-environment.yaml).

Tools are typed and documented (Google style): transformers turns the signature and docstring into the
JSON schema the chat template shows the model.
"""

from __future__ import annotations


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.

    Returns:
        The sum a + b.
    """
    return a + b


def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first number.
        b: The second number.

    Returns:
        The product a * b.
    """
    return a * b


def _number(value) -> float | None:
    try:
        return float(str(value).replace(",", "").strip())
    except ValueError:
        return None


class Calculator:
    """Arithmetic with tools: the model computes with add/multiply and submits its result; reward 1.0 when the
    submitted number is the record's `answer` (less 0.25 per call after the submission), else 0.0. TRL builds one instance per rollout and calls reset()
    with the record's columns before each."""

    def reset(self, answer=None, **columns) -> None:
        self.expected = _number(answer)
        self.submitted: float | None = None
        self.calls = 0
        self.after_submit = 0  # calls made once the answer is in: the episode should end there

    def add(self, a: float, b: float) -> float:
        """Add two numbers.

        Args:
            a: The first number.
            b: The second number.

        Returns:
            The sum a + b.
        """
        self._count()
        return a + b

    def multiply(self, a: float, b: float) -> float:
        """Multiply two numbers.

        Args:
            a: The first number.
            b: The second number.

        Returns:
            The product a * b.
        """
        self._count()
        return a * b

    def submit(self, answer: float) -> str:
        """Submit the final answer to the task. Only the first submission counts.

        Args:
            answer: The final numeric result.

        Returns:
            A confirmation.
        """
        self._count()
        if self.submitted is None:
            self.submitted = _number(answer)
        return "submitted"

    def _count(self) -> None:
        self.calls += 1
        if self.submitted is not None:
            self.after_submit += 1

    def get_reward(self) -> float:
        """1.0 for the right number submitted, less 0.25 for every call made after it (the episode is over
        once the answer is in: without this, calls after the submission would cost nothing)."""
        if self.submitted is None or self.expected is None or abs(self.submitted - self.expected) >= 1e-6:
            return 0.0
        return max(0.0, 1.0 - 0.25 * self.after_submit)
