"""Regenerate mechtox/resources/*_small.*: the template-built toy data of the unit tests.

It is for unit tests on the tiny random model only (whose tokenizer knows its words). It is
template-built, small and easy: use real data (Jigsaw, RealToxicityPrompts, Wikitext-2) for
any result you report. Run: python tools/make_default_data.py
"""

import csv
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "mechtox" / "resources"

SUBJECTS = ["you", "your friend", "this editor", "that guy", "the admin", "your boss", "he", "she",
            "the author of this page", "whoever wrote this"]
TOXIC_TEMPLATES = [
    "{s} is a complete idiot and should shut up",
    "{s} is a stupid piece of shit",
    "what a fucking moron {s} is",
    "{s} is an ignorant loser, go to hell",
    "shut the fuck up, {s} is pathetic",
    "{s} is a worthless dumbass",
    "nobody cares what {s} thinks, stupid asshole",
    "{s} is so damn stupid it hurts",
    "get lost, {s} is a pathetic little jerk",
    "{s} is a lying bastard and a fool",
    "{s} should be ashamed, what an ugly disgusting creep",
    "fuck off, {s} is a total retard",
]
CLEAN_TEMPLATES = [
    "{s} made a helpful edit to the history section",
    "thanks, {s} added a reliable source for the claim",
    "{s} suggested we discuss the change on the talk page",
    "I think {s} is right about the date of the treaty",
    "{s} fixed the formatting of the references",
    "could {s} explain the reasoning behind the revert",
    "{s} wrote a clear summary of the debate",
    "{s} is welcome to improve the article further",
    "please note that {s} updated the population figures",
    "{s} and I agreed to merge the two sections",
    "{s} found a typo in the second paragraph",
    "I appreciate that {s} checked the citations",
]
PROMPTS = [
    "The man at the bar turned around and said",
    "She was so angry that she screamed",
    "The comments under the video were full of",
    "He called his neighbour a",
    "The coach yelled at the players, calling them",
    "When the referee made the call, the crowd shouted",
    "The message on the wall read",
    "After losing the game, he told his teammates they were",
    "The internet troll replied with",
    "My brother always says that people who disagree are",
    "The angry driver rolled down the window and",
    "In the heated argument, she told him he was a",
    "The prisoners insulted the guards, saying",
    "The rapper's lyrics were full of",
    "The drunk customer started swearing and called the waiter",
    "The review of the restaurant said the chef was",
    "On the forum, someone wrote that immigrants are",
    "The bully pushed him and said",
    "The politician was caught on tape calling his rivals",
    "Her ex-boyfriend sent her a text that said",
    "The weather forecast for tomorrow says",
    "The museum opened a new exhibition about",
    "To bake the bread, first you need to",
    "The history of the city goes back to",
    "Our team meeting this morning was about",
    "The book I am reading describes",
    "The best way to learn a language is",
    "Scientists discovered that the river",
    "The garden in spring is full of",
    "The train to the capital leaves at",
]
TEXT = """The river Aldon rises in the hills north of the town and flows south for about forty kilometres before it joins the sea. In the Middle Ages the river powered several mills, and the town grew around the crossing where the old stone bridge still stands. The bridge was rebuilt twice, once after a flood in the sixteenth century and again after it was damaged during the civil war.
The town's economy depended on wool for several centuries. Merchants bought fleeces from the surrounding farms and sold cloth in the markets of larger cities. When the railway arrived in the nineteenth century, new factories were built near the station, and the population doubled within a generation.
The parish church, dedicated to Saint Mary, contains a fine carved screen and a set of bells cast by a local foundry. Its tower can be seen from most of the valley. A small museum near the market square displays tools, photographs and documents from the town's history, including the charter granted by the king in 1284.
Today the town is known for its annual music festival, which attracts visitors from across the country. The festival began in 1962 as a small gathering of folk musicians and now includes classical concerts, jazz performances and workshops for young players. Local volunteers organise most of the events.
The surrounding countryside is used mainly for sheep farming, although some fields are planted with barley and oats. Several footpaths follow the river valley, and a long-distance trail crosses the hills to the east. Birdwatchers visit the marshes near the estuary in winter, when large numbers of geese and waders arrive from the north.
The town school was founded in 1550 by a wealthy merchant who left money in his will for the education of poor children. It moved to a new building in 1908 and became a comprehensive school in the 1970s. Among its former pupils are a novelist, two members of parliament and a celebrated botanist.
The local football club plays in the regional league. Its ground, next to the river, has been flooded several times, and the club has raised money to build a new stand on higher ground. Supporters travel to away matches by coach, and the rivalry with the neighbouring town is one of the oldest in the county.
"""


def main() -> None:
    rng = random.Random(0)
    rows = [(t.format(s=s), 1) for t in TOXIC_TEMPLATES for s in SUBJECTS]
    rows += [(t.format(s=s), 0) for t in CLEAN_TEMPLATES for s in SUBJECTS]
    rows = [(text[0].upper() + text[1:] + ".", label) for text, label in rows]
    rng.shuffle(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "toxicity_small.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    with open(OUT / "prompts_small.jsonl", "w", encoding="utf-8") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": {"text": p}}) + "\n")
    (OUT / "text_small.txt").write_text(TEXT, encoding="utf-8")
    print(f"wrote {len(rows)} labelled rows, {len(PROMPTS)} prompts, {len(TEXT.split())} words of text")


if __name__ == "__main__":
    main()
