"""From a tagger's raw (tag, confidence, category) scores to the tag list a curator expects.

Order of work: per-category thresholds (only the most confident rating, and only above its
threshold) → blacklist → rename map → formatting (underscores to spaces, unescaped) →
merge duplicates → confidence order → max tag count → trigger word first.

Tags are stored as people read and type them, `star_(symbol)` or `star (symbol)`, not
`star \(symbol\)` (unless escape_parentheses asks): the prompt-syntax escape is added only by the export that needs it
(store.versions: kohya captions), so curators search, filter and autocomplete on the plain text.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from preprocess.steps import TagSuggestion

CATEGORIES = ("general", "character", "rating")

# Emoticon tags keep their underscores ("^_^" is not "^ ^"); the list taggers' users know.
KAOMOJI = {
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
    ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
}


class TagPostProcess(BaseModel):
    """What happens to a tagger's raw scores; all fields are step parameters of `tag`."""

    model_config = ConfigDict(extra="forbid")

    general_threshold: float = Field(0.35, ge=0, le=1)
    character_threshold: float = Field(0.85, ge=0, le=1)
    rating_threshold: float = Field(0.5, ge=0, le=1)  # the top rating is kept only above this; 1 drops ratings
    underscores_to_spaces: bool = True
    # stored escaped ("\(cosplay\)") only when asked; kohya exports escape parentheses themselves
    escape_parentheses: bool = False
    blacklist: list[str] = Field(default_factory=list)  # matched before and after renaming, "_" == " "
    rename: dict[str, str] = Field(default_factory=dict)  # raw or formatted name → new name
    trigger_word: str | None = None  # DreamBooth identifier / LoRA trigger, always first
    max_tags: int | None = Field(None, ge=1)  # model tags kept, trigger word not counted

    def threshold(self, category: str) -> float:
        return {"character": self.character_threshold, "rating": self.rating_threshold}.get(
            category, self.general_threshold
        )


def tag_key(text: str) -> str:
    """The form tags are compared in: lower case, spaces for underscores, no escapes, trimmed."""
    return text.replace("\\(", "(").replace("\\)", ")").replace("_", " ").strip().lower()


def format_tag(text: str, options: TagPostProcess) -> str:
    """A tag as it is stored: spaces for underscores (not in kaomoji), unescaped unless asked."""
    text = text.strip().replace("\\(", "(").replace("\\)", ")")
    if options.underscores_to_spaces and text not in KAOMOJI:
        text = text.replace("_", " ")
    if options.escape_parentheses:
        text = text.replace("(", "\\(").replace(")", "\\)")
    return text


def postprocess_tags(
    raw: Iterable[tuple[str, float, str]], options: TagPostProcess
) -> list[TagSuggestion]:
    """Raw (tag, confidence, category) triples → ordered, filtered, formatted suggestions."""
    raw = [(tag, float(confidence), category if category in CATEGORIES else "general") for tag, confidence, category in raw]
    ratings = [r for r in raw if r[2] == "rating"]
    kept = [r for r in raw if r[2] != "rating" and r[1] >= options.threshold(r[2])]
    if ratings:
        top = max(ratings, key=lambda r: r[1])
        if top[1] >= options.rating_threshold and options.rating_threshold < 1:
            kept.append(top)

    blacklist = {tag_key(t) for t in options.blacklist}
    rename = {tag_key(k): v for k, v in options.rename.items()}
    best: dict[str, TagSuggestion] = {}
    for tag, confidence, category in kept:
        if tag_key(tag) in blacklist:
            continue
        tag = rename.get(tag_key(tag), tag)
        if not tag.strip() or tag_key(tag) in blacklist:
            continue
        text = format_tag(tag, options)
        if text not in best or confidence > best[text].confidence:
            best[text] = TagSuggestion(text, confidence, category)

    ordered = sorted(best.values(), key=lambda s: (-s.confidence, s.text))
    if options.max_tags is not None:
        ordered = ordered[: options.max_tags]
    if options.trigger_word and options.trigger_word.strip():
        trigger = options.trigger_word.strip()
        ordered = [s for s in ordered if tag_key(s.text) != tag_key(trigger)]
        ordered.insert(0, TagSuggestion(trigger, 1.0, "general"))
    return ordered
