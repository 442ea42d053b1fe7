"""What passes between rooms, as typed data: messages, and the language routing rules are written in.

- :mod:`~hounsfield.contracts.messages`: :class:`StudyComplete` (listener, STOW-RS and fetch ->
  router), with its :data:`CompletionTrigger`.
- :mod:`~hounsfield.contracts.rules`: a routing rule as a tree of typed matchers, evaluated against
  the :class:`SeriesFacts` of one series. The configuration file validates rules with it, the
  catalog stores them (:mod:`hounsfield.catalog.rules`), the router evaluates them.

Nothing here imports another room.
"""

from hounsfield.contracts.messages import CompletionTrigger, StudyComplete
from hounsfield.contracts.rules import INDEXED_TAGS, Match, Rule, SeriesFacts

__all__ = ["INDEXED_TAGS", "CompletionTrigger", "Match", "Rule", "SeriesFacts", "StudyComplete"]
