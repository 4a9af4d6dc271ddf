"""German commands: templates, entities, spelled numbers and times.

See `grammar.py` for the template syntax and what a language module provides.
German needs case: rooms come with their locative ("im wohnzimmer", "auf dem
balkon"), devices and apps with their accusative article, places with their
"zu" form ("zum bahnhof", "zur nächsten apotheke"), relatives with accusative
and dative ("meinen bruder", "meinem bruder"), tasks as plain and "zu"
infinitive, and messages as main and "dass" clause (verb last).
"""

from __future__ import annotations

import numpy as np

LANG = "de"

# ----------------------------------------------------------------------------
# Numbers, times, dates, durations.

_UNITS = (
  "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn "
  "fünfzehn sechzehn siebzehn achtzehn neunzehn"
).split()
_TENS = "_ _ zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()
_WEEKDAYS = ("montag", "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag")
_MONTHS = (
  "januar februar märz april mai juni juli august september oktober november dezember"
).split()


def number_words(n: int) -> str:
  """Spells 0 <= n <= 100 ("einundzwanzig"); 1 is "eins" when counted alone."""
  if not 0 <= n <= 100:
    raise ValueError(f"number out of range: {n}")
  if n == 100:
    return "hundert"
  if n < 20:
    return _UNITS[n]
  tens, ones = divmod(n, 10)
  if ones == 0:
    return _TENS[tens]
  return ("ein" if ones == 1 else _UNITS[ones]) + "und" + _TENS[tens]


def ordinal_dative(n: int) -> str:
  """Ordinal after "am" (dative): "ersten", "dritten", "zwanzigsten"."""
  special = {1: "ersten", 3: "dritten", 7: "siebten", 8: "achten"}
  if n in special:
    return special[n]
  return number_words(n) + ("ten" if n < 20 else "sten")


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


_MINUTES = (0, 0, 0, 0, 5, 10, 15, 15, 20, 25, 30, 30, 30, 35, 40, 45, 45, 50, 55)


def _time(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A clock time as said after "um": "halb acht", "viertel vor neun", "neunzehn uhr dreißig"."""
  if form:
    raise ValueError(f"unknown de time form {form!r}")
  if rng.random() < 0.04:
    return "", _pick(rng, ("mitternacht", "zwölf uhr mittags")), ""
  hour24 = int(
    _pick(rng, (5, 6, 6, 7, 7, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23))
  )
  minute = int(_pick(rng, _MINUTES))
  if hour24 > 12 and rng.random() < 0.35:  # The 24-hour clock is common in spoken German.
    text = f"{number_words(hour24)} uhr" + (f" {number_words(minute)}" if minute else "")
    return "", text, ""
  hour = (hour24 - 1) % 12 + 1
  nxt = hour % 12 + 1
  h, n = number_words(hour), number_words(nxt)
  if minute == 0:
    text = _pick(rng, ("ein uhr" if hour == 1 else f"{h} uhr", h))
  elif minute == 30:
    text = f"halb {n}"
  elif minute == 15:
    text = f"viertel nach {h}"
  elif minute == 45:
    text = f"viertel vor {n}"
  elif minute == 25:
    text = f"fünf vor halb {n}"
  elif minute == 35:
    text = f"fünf nach halb {n}"
  elif minute < 30 and rng.random() < 0.6:
    text = f"{number_words(minute)} nach {h}"
  elif minute > 30 and rng.random() < 0.6:
    text = f"{number_words(60 - minute)} vor {n}"
  else:
    text = f"{'ein' if hour == 1 else h} uhr {number_words(minute)}"
  if rng.random() < 0.4:
    if hour24 < 11:
      text += _pick(rng, (" morgens", " früh"))
    elif hour24 < 14:
      text += " mittags"
    elif hour24 < 18:
      text += " nachmittags"
    elif hour24 < 23:
      text += " abends"
    else:
      text += " nachts"
  return "", text, ""


def _date(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A day: "morgen", "am montag", "nächsten freitag"; form "bare" drops "am" (after "für")."""
  if form not in ("", "bare"):
    raise ValueError(f"unknown de date form {form!r}")
  bare = form == "bare"
  r = rng.random()
  if r < 0.3:
    word = _pick(rng, ("heute", "morgen", "morgen", "übermorgen", "wochenende"))
    if word == "wochenende":
      return ("das", word, "") if bare else ("am", word, "")
    return "", word, ""
  day = _pick(rng, _WEEKDAYS)
  if r < 0.55:
    return ("" if bare else "am"), day, ""
  if r < 0.75:
    return "", _pick(rng, ("nächsten", "diesen", "kommenden")) + " " + day, ""
  text = f"{ordinal_dative(int(rng.integers(1, 29)))} {_pick(rng, _MONTHS)}"
  return ("den" if bare else "am"), text, ""


def _duration(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A timer length in the accusative ("eine halbe stunde"), or dative with form "dat"."""
  if form not in ("", "dat"):
    raise ValueError(f"unknown de duration form {form!r}")
  r = rng.random()
  if r < 0.55:
    n = int(_pick(rng, (1, 2, 3, 4, 5, 5, 6, 7, 8, 10, 10, 12, 15, 15, 20, 25, 30, 40, 45)))
    text = "eine minute" if n == 1 else f"{number_words(n)} minuten"
  elif r < 0.7:
    n = int(_pick(rng, (10, 15, 20, 30, 30, 45, 50, 90)))
    text = f"{number_words(n)} sekunden"
  elif r < 0.85:
    n = int(_pick(rng, (1, 1, 2, 3)))
    text = "eine stunde" if n == 1 else f"{number_words(n)} stunden"
  else:
    text = _pick(
      rng,
      (
        "eine halbe stunde",
        "anderthalb stunden",
        "eineinhalb minuten",
        "eine viertelstunde",
        "eine dreiviertelstunde",
        f"eine stunde und {number_words(int(_pick(rng, (10, 15, 20, 30))))} minuten",
      ),
    )
  if form == "dat":
    words = text.split()
    if words[0] == "eine":
      words[0] = "einer"
    text = " ".join(words).replace("halbe", "halben")
  return "", text, ""


def _number(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  n = int(rng.integers(0, 16)) if rng.random() < 0.75 else 10 * int(rng.integers(2, 11))
  return "", number_words(n), ""


def _percent(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(5 * int(rng.integers(1, 21)))} prozent", ""


def _temperature(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(int(rng.integers(16, 29)))} grad", ""


GENERATORS = {
  "time": _time,
  "date": _date,
  "duration": _duration,
  "number": _number,
  "percent": _percent,
  "temperature": _temperature,
}

# ----------------------------------------------------------------------------
# Entities with grammatical information, and their forms.

# Room -> (gender, preposition of its locative).
# fmt: off
_ROOMS = {
  "küche": ("f", "in"), "wohnzimmer": ("n", "in"), "schlafzimmer": ("n", "in"),
  "badezimmer": ("n", "in"), "bad": ("n", "in"), "esszimmer": ("n", "in"), "flur": ("m", "in"),
  "büro": ("n", "in"), "arbeitszimmer": ("n", "in"), "kinderzimmer": ("n", "in"),
  "gästezimmer": ("n", "in"), "keller": ("m", "in"), "garage": ("f", "in"),
  "dachboden": ("m", "auf"), "balkon": ("m", "auf"), "terrasse": ("f", "auf"),
  "garten": ("m", "in"), "waschküche": ("f", "in"), "diele": ("f", "in"),
  "hobbyraum": ("m", "in"),
}
_DEVICES = {
  "fernseher": "m", "ventilator": "m", "heizung": "f", "klimaanlage": "f", "kaffeemaschine": "f",
  "waschmaschine": "f", "spülmaschine": "f", "trockner": "m", "wasserkocher": "m",
  "luftbefeuchter": "m", "staubsauger": "m", "saugroboter": "m", "luftreiniger": "m",
  "radio": "n", "lautsprecher": "m", "heizlüfter": "m", "backofen": "m", "drucker": "m",
  "rasensprenger": "m", "heizdecke": "f", "boiler": "m", "luftentfeuchter": "m", "beamer": "m",
}
# fmt: on
# Place -> its "zu" phrase split as (preposition and article, dative noun phrase).
# fmt: off
_PLACES = {
  "flughafen": ("zum", "flughafen"), "hauptbahnhof": ("zum", "hauptbahnhof"),
  "bahnhof": ("zum", "bahnhof"), "busbahnhof": ("zum", "busbahnhof"),
  "nächste tankstelle": ("zur", "nächsten tankstelle"),
  "nächste apotheke": ("zur", "nächsten apotheke"), "krankenhaus": ("zum", "krankenhaus"),
  "supermarkt": ("zum", "supermarkt"), "einkaufszentrum": ("zum", "einkaufszentrum"),
  "post": ("zur", "post"), "bibliothek": ("zur", "bibliothek"), "bank": ("zur", "bank"),
  "fitnessstudio": ("zum", "fitnessstudio"), "park": ("zum", "park"),
  "strand": ("zum", "strand"), "museum": ("zum", "museum"), "innenstadt": ("in die", "innenstadt"),
  "arbeit": ("zur", "arbeit"), "büro": ("ins", "büro"), "nächste café": ("zum", "nächsten café"),
  "zoo": ("zum", "zoo"), "stadion": ("zum", "stadion"), "uni": ("zur", "uni"),
  "hotel": ("zum", "hotel"), "zahnarzt": ("zum", "zahnarzt"), "schule": ("zur", "schule"),
  "nächste baumarkt": ("zum", "nächsten baumarkt"),
  "nächste ladestation": ("zur", "nächsten ladestation"), "rathaus": ("zum", "rathaus"),
  "kino": ("ins", "kino"), "markt": ("zum", "markt"), "tierarzt": ("zum", "tierarzt"),
  "nächste parkhaus": ("zum", "nächsten parkhaus"), "kindergarten": ("zum", "kindergarten"),
  "hafen": ("zum", "hafen"), "messe": ("zur", "messe"),
}
_APPS = {
  "kamera": "f", "kalender": "m", "einstellungen": "p", "galerie": "f", "fotos": "p",
  "taschenrechner": "m", "uhr": "f", "notizen": "p", "nachrichten": "p", "kontakte": "p",
  "browser": "m", "mediathek": "f", "tagesschau": "f", "zalando": "0", "kleinanzeigen": "0",
  "lieferando": "0", "komoot": "0", "chefkoch": "0", "idealo": "0", "flixbus": "0",
  "payback": "0", "wetteronline": "0", "joyn": "0", "spiegel online": "0",
}
# fmt: on
_ARTICLES = {  # gender -> (accusative, dative, zu-contraction)
  "m": ("den", "dem", "zum"),
  "f": ("die", "der", "zur"),
  "n": ("das", "dem", "zum"),
  "p": ("die", "den", "zu den"),
  "0": ("", "", "zu"),
}
# Relatives are declined; names are not.
# fmt: off
_RELATIVES = {
  "meine frau": ("meine frau", "meiner frau"), "mein mann": ("meinen mann", "meinem mann"),
  "meine schwester": ("meine schwester", "meiner schwester"),
  "mein bruder": ("meinen bruder", "meinem bruder"), "mein sohn": ("meinen sohn", "meinem sohn"),
  "meine tochter": ("meine tochter", "meiner tochter"),
  "mein chef": ("meinen chef", "meinem chef"), "meine chefin": ("meine chefin", "meiner chefin"),
  "meine mutter": ("meine mutter", "meiner mutter"),
  "mein vater": ("meinen vater", "meinem vater"),
}
_TASKS = {  # Infinitive -> "zu" infinitive (separable prefixes take "zu" inside).
  "den zahnarzt anrufen": "den zahnarzt anzurufen",
  "den müll rausbringen": "den müll rauszubringen",
  "die blumen gießen": "die blumen zu gießen",
  "die kinder abholen": "die kinder abzuholen",
  "meine tabletten nehmen": "meine tabletten zu nehmen",
  "die stromrechnung bezahlen": "die stromrechnung zu bezahlen",
  "milch kaufen": "milch zu kaufen",
  "mit dem hund rausgehen": "mit dem hund rauszugehen",
  "mama anrufen": "mama anzurufen",
  "den bericht schicken": "den bericht zu schicken",
  "einen tisch reservieren": "einen tisch zu reservieren",
  "den pass verlängern": "den pass zu verlängern",
  "die wäsche aufhängen": "die wäsche aufzuhängen",
  "die katze füttern": "die katze zu füttern",
  "nach dem ofen sehen": "nach dem ofen zu sehen",
  "das auto umparken": "das auto umzuparken",
  "das handy aufladen": "das handy aufzuladen",
  "die bücher zurückbringen": "die bücher zurückzubringen",
  "ein geschenk kaufen": "ein geschenk zu kaufen",
  "einen termin beim friseur machen": "einen termin beim friseur zu machen",
  "wasser trinken": "wasser zu trinken",
  "die tür abschließen": "die tür abzuschließen",
  "oma zum geburtstag gratulieren": "oma zum geburtstag zu gratulieren",
  "zur bank gehen": "zur bank zu gehen",
  "einkaufen gehen": "einkaufen zu gehen",
}
_MESSAGES = {  # Main clause -> "dass" clause (verb last).
  "ich komme später": "ich später komme",
  "ich bin in zehn minuten da": "ich in zehn minuten da bin",
  "ich bin unterwegs": "ich unterwegs bin",
  "das essen ist fertig": "das essen fertig ist",
  "ich stehe im stau": "ich im stau stehe",
  "ich rufe dich später an": "ich dich später anrufe",
  "ich vermisse dich": "ich dich vermisse",
  "ich hab dich lieb": "ich dich lieb hab",
  "ich bin im supermarkt": "ich im supermarkt bin",
  "ich mache jetzt feierabend": "ich jetzt feierabend mache",
  "ich habe meinen schlüssel vergessen": "ich meinen schlüssel vergessen habe",
  "ich habe die karten": "ich die karten habe",
  "die kinder schlafen schon": "die kinder schon schlafen",
  "wir brauchen milch": "wir milch brauchen",
  "ich hole dich von der schule ab": "ich dich von der schule abhole",
  "ich bin gleich zu hause": "ich gleich zu hause bin",
  "das paket ist angekommen": "das paket angekommen ist",
  "der zug hat verspätung": "der zug verspätung hat",
  "ich warte draußen": "ich draußen warte",
  "es regnet hier": "es hier regnet",
  "das treffen ist um drei": "das treffen um drei ist",
  "ich bin zum abendessen zurück": "ich zum abendessen zurück bin",
}
# fmt: on


def inflect(slot_type: str, value: str, form: str) -> tuple[str, str, str]:
  """Surface form of an entity in a grammatical context (see the module docstring)."""
  if not form:
    return "", value, ""
  if slot_type == "room" and form in ("in", "acc"):
    gender, prep = _ROOMS[value]
    if form == "acc":
      return _ARTICLES[gender][0], value, ""
    dative = _ARTICLES[gender][1]
    before = "im" if prep == "in" and dative == "dem" else f"{prep} {dative}"
    return before, value, ""
  if slot_type in ("device", "app") and form in ("acc", "zu"):
    gender = (_DEVICES if slot_type == "device" else _APPS)[value]
    return _ARTICLES[gender][0 if form == "acc" else 2], value, ""
  if slot_type == "place" and form == "zu":
    before, noun = _PLACES[value]
    return before, noun, ""
  if slot_type == "contact" and form in ("acc", "dat"):
    if value in _RELATIVES:
      return "", _RELATIVES[value][0 if form == "acc" else 1], ""
    return "", value, ""
  if slot_type == "task" and form in ("inf", "zu"):
    return "", value if form == "inf" else _TASKS[value], ""
  if slot_type == "message" and form == "dass":
    return "", _MESSAGES[value], ""
  if slot_type == "language" and form == "ins":
    return "ins", value + "e" if value.endswith("isch") else value, ""
  raise ValueError(f"de {slot_type} has no form {form!r}")


# ----------------------------------------------------------------------------
# Templates.

MACROS = {
  "pre": "[hey|okay|äh|also|hallo]",
  "bitte": "[bitte]",
  "kannst": "(kannst du|könntest du|würdest du|kannst du bitte|könntest du bitte)",
}

# fmt: off
TEMPLATES: dict[str, tuple[str, ...]] = {
  "play_music": (
    "$pre spiel {song} [von {artist}] [{room:in}]",
    "$kannst [mal] {song} [von {artist}] spielen",
    "spiel (was|etwas|musik|ein paar lieder) von {artist} [{room:in}|auf {app}]",
    "ich (will|möchte|würde gern) {song} hören",
    "spiel das lied {song} [auf {app}]",
    "(leg mal was von {artist} auf|mach mal {artist} an)",
    "spiel lieder von {artist} in zufälliger reihenfolge",
    "ich hätte lust auf {artist}",
    "spiel mir {song} von {artist} vor",
  ),
  "pause_music": (
    "$pre (pausiere|stopp|stoppe) die musik [{room:in}]",
    "(pause|musik pausieren|pausieren) $bitte",
    "$kannst die musik (pausieren|anhalten|stoppen)",
    "halt (mal|kurz) die musik an",
    "mach die musik aus [{room:in}]",
    "hör auf (musik zu spielen|zu spielen)",
    "(pause bitte|kurz pause) ich muss telefonieren",
  ),
  "next_track": (
    "$pre (nächstes lied|nächster song|nächster titel) $bitte",
    "(überspring|überspringe) (das lied|diesen song|den titel)",
    "spiel das nächste (lied|stück)",
    "$kannst (das lied überspringen|zum nächsten lied springen)",
    "das lied gefällt mir nicht (nächstes|weiter|spiel was anderes)",
    "(weiter|eins weiter) $bitte",
    "(spring|geh) zum nächsten (lied|titel)",
    "spiel (was|etwas) anderes $bitte",
  ),
  "volume_up": (
    "$pre mach (lauter|die musik lauter|es lauter) $bitte",
    "(lauter|etwas lauter|noch lauter) $bitte",
    "dreh (die musik|den ton|es) [etwas|ein bisschen] (auf|lauter)",
    "$kannst (die lautstärke erhöhen|lauter machen)",
    "ich (höre|verstehe) nichts [mach lauter]",
    "lautstärke (hoch|rauf|erhöhen) $bitte",
    "erhöhe die lautstärke [{room:in}]",
    "(stell|mach) die musik [{room:in}] lauter",
  ),
  "volume_down": (
    "$pre mach (leiser|die musik leiser|es leiser) $bitte",
    "(leiser|etwas leiser|noch leiser) $bitte",
    "dreh (die musik|den ton|es) [etwas|ein bisschen] (runter|leiser)",
    "$kannst (die lautstärke verringern|leiser machen)",
    "das ist (viel zu laut|zu laut) [mach leiser]",
    "lautstärke (runter|verringern) $bitte",
    "(verringere|reduziere) die lautstärke [{room:in}]",
    "(stell|mach) die musik [{room:in}] leiser",
  ),
  "volume_set": (
    "$pre stell die lautstärke auf {number}",
    "lautstärke [auf] {number} $bitte",
    "$kannst die lautstärke auf {percent} stellen",
    "mach die lautstärke auf {number}",
    "(dreh|stell) die musik [{room:in}] auf {percent}",
    "setze die lautstärke auf {number}",
    "(dreh|mach) (lauter|leiser) auf {number}",
    "ich will lautstärke {number}",
  ),
  "set_alarm": (
    "$pre stell (einen|den|meinen) wecker (auf|für) {time} [{date}]",
    "weck mich (um|gegen) {time}",
    "weck mich {date} um {time}",
    "$kannst einen wecker für {time} stellen",
    "ich muss {date} um {time} aufstehen",
    "wecker (auf|für) {time} [{date}] $bitte",
    "(erstelle|stelle) einen alarm für {time} [{date}]",
    "ich brauche einen wecker (um|für) {time}",
  ),
  "cancel_alarm": (
    "$pre (lösche|lösch) (den|meinen) wecker [für {time}|für {date:bare}]",
    "(schalte|stell) den wecker [für {date:bare}] aus",
    "$kannst den wecker (für {time}|für {date:bare}) löschen",
    "ich brauche {date} keinen wecker",
    "weck mich {date} nicht",
    "(deaktiviere|deaktivier) (den|meinen) wecker [um {time}]",
    "(lösche|entferne) alle wecker",
    "kein wecker {date} $bitte",
  ),
  "set_timer": (
    "$pre stell einen timer (auf|für) {duration}",
    "timer (auf|für) {duration} $bitte",
    "$kannst einen timer (auf|für) {duration} stellen",
    "starte einen countdown von {duration:dat}",
    "sag mir in {duration:dat} bescheid",
    "ich brauche einen timer für {duration} [für die nudeln|für die eier|für den ofen]",
    "(stell|stelle) die eieruhr auf {duration}",
  ),
  "set_reminder": (
    "$pre erinnere mich [{date}] daran {task:zu}",
    "erinnere mich {date} um {time} daran {task:zu}",
    "$kannst mich [um {time}] daran erinnern {task:zu}",
    "(erstelle|mach) eine erinnerung [für {date:bare}] {task:inf}",
    "(erstelle|mach) eine erinnerung um {time} [{date}] {task:inf}",
    "lass mich nicht vergessen {task:zu}",
    "ich muss {date} {task:inf} (erinnere mich daran|erinnerst du mich)",
    "erinnerung (für|um) {time} {task:inf}",
  ),
  "call_contact": (
    "$pre ruf {contact:acc} an $bitte",
    "{contact:acc} anrufen $bitte",
    "$kannst {contact:acc} anrufen",
    "(wähl|wähle) die nummer von {contact:dat}",
    "ich (möchte|will|muss) {contact:acc} anrufen",
    "starte einen videoanruf mit {contact:dat}",
    "verbinde mich mit {contact:dat}",
    "ruf bei {contact:dat} an",
  ),
  "send_message": (
    "$pre schreib {contact:dat} [eine nachricht] {message}",
    "sag {contact:dat} dass {message:dass}",
    "(schick|sende) {contact:dat} eine nachricht dass {message:dass}",
    "$kannst {contact:dat} schreiben dass {message:dass}",
    "(schick|sende) eine (nachricht|sms) an {contact:acc} {message}",
    "gib {contact:dat} bescheid dass {message:dass}",
    "(whatsapp|nachricht) an {contact:acc} {message}",
    "teile {contact:dat} mit dass {message:dass}",
  ),
  "get_weather": (
    "$pre wie ist das wetter [in {city}] [{date}]",
    "wie wird das wetter [in {city}] {date}",
    "(regnet es|gibt es regen) {date} [in {city}]",
    "$kannst mir das wetter (für|in) {city} sagen",
    "brauche ich {date} einen regenschirm",
    "wie ist die wettervorhersage (für {date:bare}|für {city})",
    "wie (warm|kalt) (ist es|wird es) [{date}] in {city}",
    "(schneit es|scheint die sonne) {date} in {city}",
  ),
  "get_time": (
    "$pre wie spät ist es [in {city}] [gerade]",
    "wie viel uhr ist es [in {city}]",
    "$kannst mir sagen wie spät es [in {city}] ist",
    "welche uhrzeit haben wir [in {city}]",
    "(sag mir|nenn mir) die uhrzeit [in {city}]",
    "uhrzeit in {city} $bitte",
    "was ist die (aktuelle|lokale) uhrzeit in {city}",
    "weißt du wie spät es (ist|in {city} ist)",
  ),
  "lights_on": (
    "$pre mach das licht [{room:in}] an",
    "schalte das licht [{room:in}] ein",
    "licht an [{room:in}] $bitte",
    "$kannst das licht [{room:in}] (anmachen|einschalten)",
    "es ist so dunkel (hier|{room:in}) [mach das licht an]",
    "mach {room:acc} hell",
    "ich brauche licht {room:in}",
    "(alle lichter|die lampen) [{room:in}] an $bitte",
  ),
  "lights_off": (
    "$pre mach das licht [{room:in}] aus",
    "schalte das licht [{room:in}] aus",
    "licht aus [{room:in}] $bitte",
    "$kannst das licht [{room:in}] (ausmachen|ausschalten)",
    "(ich geh schlafen|gute nacht) (mach alle lichter aus|mach das licht aus)",
    "mach {room:acc} dunkel",
    "(alle lichter|die lampen) [{room:in}] aus $bitte",
    "das licht {room:in} (kann aus|muss aus)",
  ),
  "lights_dim": (
    "$pre dimm das licht [{room:in}] [auf {percent}]",
    "mach das licht [{room:in}] (dunkler|gedämpfter|schwächer)",
    "$kannst das licht [{room:in}] (dimmen|runterdimmen)",
    "stell das licht [{room:in}] auf {percent}",
    "(helligkeit|licht) auf {percent} [{room:in}]",
    "das licht ist zu hell [{room:in}]",
    "(reduziere|verringere) die helligkeit [{room:in}] [auf {percent}]",
    "dreh das licht [{room:in}] runter",
  ),
  "set_temperature": (
    "$pre stell die heizung [{room:in}] auf {temperature}",
    "ich möchte {temperature} {room:in}",
    "$kannst die temperatur auf {temperature} stellen",
    "(heize|heiz) {room:acc} auf {temperature}",
    "(dreh|stell) die heizung (hoch|runter) auf {temperature}",
    "thermostat auf {temperature} $bitte",
    "(ändere|setze) die temperatur [{room:in}] auf {temperature}",
    "(kühl|kühle) {room:acc} auf {temperature} [runter]",
  ),
  "device_on": (
    "$pre schalte {device:acc} [{room:in}] ein",
    "mach {device:acc} [{room:in}] an",
    "$kannst {device:acc} (einschalten|anmachen)",
    "{device} an $bitte",
    "(starte|start) {device:acc}",
    "(schalt|mach) mal {device:acc} an",
    "ich möchte {device:acc} [{room:in}] (einschalten|anmachen)",
    "{device:acc} einschalten $bitte",
  ),
  "device_off": (
    "$pre schalte {device:acc} [{room:in}] aus",
    "mach {device:acc} [{room:in}] aus",
    "$kannst {device:acc} (ausschalten|ausmachen)",
    "{device} aus $bitte",
    "(stopp|stoppe) {device:acc}",
    "(schalt|mach) mal {device:acc} aus",
    "ich brauche {device:acc} nicht mehr",
    "{device:acc} ausschalten $bitte",
  ),
  "navigate_to": (
    "$pre (navigiere|navigier|bring mich|führ mich) {place:zu}",
    "wie komme ich {place:zu}",
    "(zeig mir|gib mir) den weg {place:zu}",
    "$kannst mich {place:zu} (bringen|navigieren|lotsen)",
    "(navigiere|fahr|fahre) nach {city}",
    "(starte|start) die navigation nach {city}",
    "route nach {city} [ohne maut|ohne autobahn]",
    "ich (muss|will) {place:zu}",
  ),
  "add_to_list": (
    "$pre setz {item} auf die einkaufsliste",
    "(füge|füg) {item} zur einkaufsliste hinzu",
    "$kannst {item} auf die (einkaufsliste|liste) setzen",
    "(notier|schreib) {item} auf die einkaufsliste",
    "einkaufsliste {item} (hinzufügen|dazu)",
    "(pack|tu) {item} auf die liste",
    "ich muss {item} kaufen (setz es auf die liste|schreib das auf)",
    "auf die einkaufsliste bitte noch {item}",
  ),
  "open_app": (
    "$pre öffne {app:acc}",
    "(starte|start) {app:acc}",
    "$kannst {app:acc} öffnen",
    "(geh|wechsle) {app:zu}",
    "ich (will|möchte) {app:acc} (öffnen|benutzen)",
    "(zeig mir {app:acc}|mach {app:acc} auf)",
    "öffne die {app} app",
    "bring mich {app:zu}",
  ),
  "translate": (
    "$pre was heißt {phrase} auf {language}",
    "übersetze {phrase} {language:ins}",
    "wie sagt man {phrase} auf {language}",
    "$kannst {phrase} (auf {language}|{language:ins}) übersetzen",
    "was ist {phrase} auf {language}",
    "wie heißt {phrase} auf {language}",
    "übersetz mir mal {phrase} {language:ins}",
    "ich brauche die übersetzung von {phrase} {language:ins}",
  ),
}
# fmt: on

CODE_SWITCH: dict[str, dict[str, tuple[str, ...]]] = {}
SWITCHABLE: dict[str, tuple[str, ...]] = {}

# ----------------------------------------------------------------------------
# Entities.

# fmt: off
_FIRST_NAMES = (
  "lukas", "leon", "finn", "jonas", "paul", "felix", "elias", "maximilian", "ben", "noah",
  "luis", "emil", "anton", "theo", "jakob", "moritz", "niklas", "tim", "jan", "tobias",
  "florian", "sebastian", "stefan", "thomas", "michael", "andreas", "christian", "markus",
  "martin", "daniel", "alexander", "matthias", "frank", "jürgen", "uwe", "klaus", "wolfgang",
  "dieter", "peter", "hans", "karl", "fritz", "helmut", "günter", "horst", "manfred", "bernd",
  "ralf", "sven", "mia", "emma", "hannah", "sofia", "lea", "lena", "marie", "lina",
  "ella", "clara", "leonie", "laura", "anna", "lara", "johanna", "charlotte", "greta",
  "frieda", "ida", "mathilda", "julia", "katharina", "sarah", "lisa", "sandra", "nicole",
  "stefanie", "sabine", "petra", "andrea", "claudia", "susanne", "monika", "ursula",
  "brigitte", "renate", "ingrid", "gisela", "helga", "karin", "birgit", "anja", "kerstin",
  "heike", "silke", "jana", "franziska", "theresa", "paula", "nele", "jule",
)
_SURNAMES = (
  "müller", "schmidt", "schneider", "fischer", "weber", "meyer", "wagner", "becker", "schulz",
  "hoffmann", "schäfer", "koch", "bauer", "richter", "klein", "wolf", "schröder", "neumann",
  "schwarz", "zimmermann", "braun", "krüger", "hofmann", "hartmann", "lange", "schmitt", "werner",
  "schmitz", "krause", "meier", "lehmann", "schmid", "schulze", "maier", "köhler", "herrmann",
  "könig", "walter", "mayer", "huber", "kaiser", "fuchs", "peters", "lang", "scholz", "möller",
  "weiß", "jung", "hahn", "vogel",
)
# fmt: on

# fmt: off
ENTITIES: dict[str, tuple[str, ...]] = {
  "contact": _FIRST_NAMES
  + ("mama", "papa", "oma", "opa", "mutti", "tante erika", "onkel hans")
  + tuple(_RELATIVES)
  + tuple(f"{f} {s}" for f, s in zip(_FIRST_NAMES[1::2], _SURNAMES, strict=True)),
  "song": (
    "atemlos durch die nacht", "an tagen wie diesen", "männer", "mensch",
    "alles nur geklaut", "schrei nach liebe", "ein kompliment", "auf uns",
    "lieblingsmensch", "chöre", "symphonie", "durch den monsun",
    "ich war noch niemals in new york", "griechischer wein", "über den wolken",
    "skandal im sperrbezirk", "major tom", "da da da", "hurra die welt geht unter",
    "haus am see", "astronaut", "so soll es bleiben", "zeit dass sich was dreht", "sonne",
    "du hast", "engel", "ohne dich", "mein herz brennt", "junge", "zu spät", "westerland",
    "altes fieber", "bonnie und clyde", "irgendwie irgendwo irgendwann",
    "neunundneunzig luftballons", "verdammt ich lieb dich", "marmor stein und eisen bricht",
    "ein bisschen frieden", "dieser weg", "ich lass für dich das licht an", "perfekte welle",
    "geiles leben", "heute hier morgen dort", "aber bitte mit sahne",
    "schuld war nur der bossa nova", "die gedanken sind frei", "stille nacht",
    "o tannenbaum", "alle meine entchen", "hänschen klein", "der mond ist aufgegangen",
    "guten abend gut nacht", "kein schöner land", "hoch auf dem gelben wagen",
    "ein prosit der gemütlichkeit", "jeanny", "der kommissar", "sie sieht mich einfach nicht",
    "ich will keine schokolade", "wahnsinn", "layla", "cordula grün", "joana",
    "tausendmal berührt", "was hat dich bloß so ruiniert", "nur ein wort",
    "halt dich an mir fest", "wenn sie tanzt", "ein stern der deinen namen trägt", "komet",
    "tränen lügen nicht", "schwerelos", "so wie du bist", "bis meine welt die augen schließt",
    "morgens immer müde", "eisbär", "vogel der nacht", "blau blau blau blüht der enzian",
    "tulpen aus amsterdam", "junge komm bald wieder", "ein schiff wird kommen",
    "kinder an die macht", "flugzeuge im bauch", "der letzte tag", "wunder geschehn",
    "fliegerlied", "nur noch kurz die welt retten", "das rote pferd", "rosenrot",
    "musik sein", "einmal um die welt", "feuerwerk", "wolke sieben", "hulapalu",
    "große freiheit", "ich bin ich", "für mich soll's rote rosen regnen",
    "ganz in weiß", "aber dich gibt's nur einmal für mich", "ein bett im kornfeld",
    "am fenster", "über sieben brücken musst du gehn", "der weg", "wir sind groß",
    "wo sind all die blumen hin", "jenseits von eden", "die da", "der junge mit der mundharmonika",
    "dieses leben", "leichtes gepäck", "leuchtturm", "steigerlied",
  ),
  "artist": (
    "herbert grönemeyer", "helene fischer", "die toten hosen", "die ärzte", "rammstein",
    "nena", "udo lindenberg", "peter maffay", "marius müller-westernhagen", "falco",
    "udo jürgens", "reinhard mey", "xavier naidoo", "sarah connor", "mark forster", "lena",
    "andreas bourani", "tim bendzko", "silbermond", "juli", "wir sind helden",
    "revolverheld", "max giesinger", "wincent weiss", "johannes oerding", "clueso",
    "peter fox", "seeed", "cro", "sido", "kool savas", "die fantastischen vier",
    "fettes brot", "deichkind", "kraftwerk", "scorpions", "tokio hotel", "unheilig",
    "puhdys", "karat", "roland kaiser", "andrea berg", "beatrice egli", "vanessa mai",
    "matthias reim", "howard carpendale", "roy black", "heino", "dj ötzi", "nicole",
    "marianne rosenberg", "münchener freiheit", "spider murphy gang", "ideal",
    "element of crime", "tocotronic", "kettcar", "annenmaykantereit", "provinz",
    "kraftklub", "casper", "marteria", "shirin david", "loredana", "capital bra",
    "nina chuba", "philipp poisel", "bosse", "max raabe", "helge schneider", "die prinzen",
    "pur", "karel gott", "ben zucker", "santiano", "giant rooks", "ski aggu", "juju",
    "rainhard fendrich", "wolfgang ambros", "ludwig hirsch", "stefanie heinzmann",
    "lea", "joris", "namika", "alligatoah", "jan delay",
  ),
  "city": (
    "berlin", "hamburg", "münchen", "köln", "frankfurt", "stuttgart", "düsseldorf",
    "leipzig", "dortmund", "essen", "bremen", "dresden", "hannover", "nürnberg", "duisburg",
    "bochum", "wuppertal", "bielefeld", "bonn", "münster", "mannheim", "karlsruhe",
    "augsburg", "wiesbaden", "mönchengladbach", "gelsenkirchen", "aachen", "braunschweig",
    "kiel", "chemnitz", "halle", "magdeburg", "freiburg", "krefeld", "mainz", "lübeck",
    "erfurt", "oberhausen", "rostock", "kassel", "hagen", "potsdam", "saarbrücken", "hamm",
    "ludwigshafen", "oldenburg", "osnabrück", "leverkusen", "heidelberg", "darmstadt",
    "solingen", "regensburg", "paderborn", "ingolstadt", "offenbach", "würzburg", "fürth",
    "ulm", "heilbronn", "pforzheim", "wolfsburg", "göttingen", "reutlingen", "koblenz",
    "bremerhaven", "recklinghausen", "erlangen", "trier", "jena", "siegen", "hildesheim",
    "cottbus", "schwerin", "flensburg", "konstanz", "passau", "bamberg", "bayreuth",
    "weimar", "görlitz", "stralsund", "wien", "graz", "linz", "salzburg", "innsbruck",
    "klagenfurt", "bregenz", "zürich", "bern", "basel", "genf", "lausanne", "luzern",
    "sankt gallen", "lugano", "winterthur", "paris", "london", "rom", "mailand", "madrid",
    "barcelona", "lissabon", "amsterdam", "brüssel", "prag", "warschau", "budapest",
    "kopenhagen", "stockholm", "oslo", "helsinki", "moskau", "istanbul", "athen", "venedig",
    "neapel", "florenz", "new york", "tokio", "peking", "sydney",
  ),
  "place": tuple(_PLACES),
  "room": tuple(_ROOMS),
  "device": tuple(_DEVICES),
  "app": tuple(_APPS),
  "item": (
    "milch", "eier", "brot", "butter", "kaffee", "äpfel", "bananen", "klopapier",
    "spülmittel", "orangensaft", "hähnchenbrust", "hackfleisch", "käse", "joghurt", "müsli",
    "reis", "nudeln", "tomaten", "zwiebeln", "knoblauch", "kartoffeln", "olivenöl",
    "erdnussbutter", "erdbeermarmelade", "küchenrolle", "waschmittel", "batterien",
    "glühbirnen", "shampoo", "zahnpasta", "hundefutter", "katzenstreu", "eis",
    "tiefkühlpizza", "lachs", "salat", "karotten", "avocados", "zitronen", "mehl", "zucker",
    "salz", "pfeffer", "tee", "mineralwasser", "bier", "rotwein", "chips", "kekse",
    "haferflocken", "honig", "ketchup", "senf", "mayonnaise", "brötchen", "frischkäse",
    "schmand", "spinat", "brokkoli", "champignons", "paprika", "gurken", "trauben",
    "blaubeeren", "müllbeutel", "alufolie", "windeln", "feuchttücher", "sonnencreme",
    "quark", "sahne", "leberwurst", "sauerkraut", "brezeln",
  ),
  "task": tuple(_TASKS),
  "message": tuple(_MESSAGES),
  "phrase": (
    "guten morgen", "vielen dank", "wo ist die toilette", "was kostet das",
    "ich verstehe das nicht", "freut mich", "gute nacht", "entschuldigung",
    "es tut mir leid", "die rechnung bitte", "sprechen sie englisch", "ich liebe dich",
    "alles gute zum geburtstag", "bis morgen", "wo ist der bahnhof", "ich habe hunger",
    "können sie mir helfen", "wie heißt du", "wie geht es dir", "einen schönen tag noch",
    "prost", "ich bin allergisch gegen nüsse",
  ),
  "language": (
    "englisch", "französisch", "spanisch", "italienisch", "portugiesisch", "chinesisch",
    "japanisch", "koreanisch", "russisch", "hindi", "arabisch", "niederländisch", "türkisch",
    "griechisch", "polnisch", "schwedisch",
  ),
}
# fmt: on
