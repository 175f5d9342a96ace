"""verb_past_tense, adjective_comparative and adjective_superlative via lemminflect.

The base words are authored by headatlas (common verbs and adjectives that inflect with
-ed/-er/-est or irregularly); lemminflect supplies the inflected forms. Verbs whose past tense
equals the base (cut, put, read...) are left out so the relation never degenerates to copying.
"""

from __future__ import annotations

from headatlas.relations.generate.datafile import generated_provenance, leaked_pairs, render, write


def _words(text: str) -> list[str]:
    return text.split()


VERBS = _words(
    """
walk talk play work jump cook clean open close start stop want need help ask call look watch
listen move live love like hate try cry carry study travel visit finish arrive answer change
climb dance dress enjoy explain fill follow hope kill kiss laugh learn marry miss pass pick
plan pull push rain remember share shout smile stay touch turn use wait wash wish worry agree
allow appear believe borrow brush count decide destroy drop earn fail fix hunt improve invite
join kick knock land mix order paint pray prefer promise reach relax repeat rescue return save
seem serve smoke spell sail trust wonder go come see take make get give know think say tell
find feel leave bring buy begin break build choose draw drink drive eat fall fight fly forget
freeze grow hear hide hold keep lead lose meet pay ride ring rise run sell send shake shoot sing
sink sit sleep speak spend stand steal swim teach throw understand wake wear win write bite blow
catch dig feed forgive lend mean seek sweep swing tear weep
"""
)

ADJECTIVES = _words(
    """
big small tall short long high low fast slow hot cold warm cool old young new rich poor strong
weak hard soft dark heavy wet dry early late loud quiet thick thin wide narrow deep shallow
clean dirty full cheap sharp dull smooth rough sweet happy sad angry busy easy funny pretty ugly
lucky healthy noisy lazy crazy silly tiny large great good bad far nice fine safe brave wise
rare simple gentle humble noble close fresh bright clear calm kind proud quick fair fat flat
grand mild wild bold plain pure rude sick slim smart steep stiff strange strict tight
tough weird brief broad dense dim dumb faint firm fierce harsh lean lively loose neat shy sour
thirsty hungry tidy wealthy windy sunny rainy cloudy empty fancy friendly holy juicy messy
muddy scary tasty light
"""
)

PAST_TEMPLATES = (
    " hike -> hiked; forbid -> forbade; <X> ->",
    " Today I hike, yesterday I hiked. Today I forbid, yesterday I forbade. Today I <X>, yesterday I",
)
COMPARATIVE_TEMPLATES = (
    " dusty -> dustier; bleak -> bleaker; <X> ->",
    " dusty, dustier; bleak, bleaker; <X>,",
)
SUPERLATIVE_TEMPLATES = (
    " dusty -> dustiest; bleak -> bleakest; <X> ->",
    " dusty, dustiest; bleak, bleakest; <X>,",
)


def inflect(words: list[str], tag: str) -> list[tuple[str, str]]:
    """(word, first lemminflect form for Penn tag ``tag``), skipping forms equal to the word."""
    from lemminflect import getInflection

    pairs = []
    for word in words:
        forms = getInflection(word, tag)
        if forms and forms[0] != word:
            pairs.append((word, forms[0]))
    return pairs


def _relation(
    name: str, description: str, tag: str, words: list[str], templates: tuple[str, ...]
) -> str:
    pairs = inflect(words, tag)
    leaked = set(leaked_pairs(pairs, templates))
    return render(
        name=name,
        category="Linguistic",
        description=description,
        provenance=generated_provenance("inflections", "lemminflect", "MIT")
        + "; base words authored by headatlas",
        prompt_templates=templates,
        pairs=[p for p in pairs if p not in leaked],
    )


def build() -> dict[str, str]:
    """The three data files, keyed by relation name."""
    return {
        "adjective_comparative": _relation(
            "adjective_comparative",
            "an adjective maps to its comparative form (tall -> taller)",
            "JJR",
            ADJECTIVES,
            COMPARATIVE_TEMPLATES,
        ),
        "adjective_superlative": _relation(
            "adjective_superlative",
            "an adjective maps to its superlative form (tall -> tallest)",
            "JJS",
            ADJECTIVES,
            SUPERLATIVE_TEMPLATES,
        ),
        "verb_past_tense": _relation(
            "verb_past_tense",
            "a verb maps to its simple past tense (walk -> walked, go -> went)",
            "VBD",
            VERBS,
            PAST_TEMPLATES,
        ),
    }


def main() -> None:
    """Rewrite the data files."""
    write(build())


if __name__ == "__main__":
    main()
