"""French commands: templates, entities, spelled numbers and times.

See `grammar.py` for the template syntax and what a language module provides.
Nouns carry a gender code ("m", "f", "mp", "fp", "v" for a singular noun
starting with a vowel, which takes "l'", or "0" for names used without
article). Where French elides ("l'aéroport", "d'adele"), the elided article
is part of the written word, so it is part of the slot value.
"""

from __future__ import annotations

import numpy as np

LANG = "fr"

# ----------------------------------------------------------------------------
# Numbers, times, dates, durations.

_UNITS = (
  "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze "
  "seize dix-sept dix-huit dix-neuf"
).split()
_TENS = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}
_WEEKDAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_MONTHS = (
  "janvier février mars avril mai juin juillet août septembre octobre novembre décembre"
).split()
_VOWELS = "aeiouyéèêëàâîïôûœh"
_ASPIRATED_H = ("huit", "hall", "hotte", "haut", "hibou")


def number_words(n: int, fem: bool = False) -> str:
  """Spells 0 <= n <= 100 ("soixante et onze", "quatre-vingt-douze"); `fem` gives "une"."""
  if not 0 <= n <= 100:
    raise ValueError(f"number out of range: {n}")
  if n < 20:
    text = _UNITS[n]
  elif n < 70:
    tens, ones = divmod(n, 10)
    text = _TENS[tens] + ("" if ones == 0 else " et un" if ones == 1 else "-" + _UNITS[ones])
  elif n < 80:
    text = "soixante et onze" if n == 71 else "soixante-" + _UNITS[n - 60]
  elif n == 80:
    text = "quatre-vingts"
  elif n < 100:
    text = "quatre-vingt-" + _UNITS[n - 80]
  else:
    text = "cent"
  if fem and text.endswith("un"):
    text += "e"
  return text


def _starts_with_vowel(text: str) -> bool:
  return text[0] in _VOWELS and not text.startswith(_ASPIRATED_H)


def _elide(word: str, value: str) -> tuple[str, str]:
  """("de", "sortir") stays; ("de", "appeler") becomes ("", "d'appeler")."""
  if _starts_with_vowel(value):
    return "", word[:-1] + "'" + value
  return word, value


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _hours(h24: int) -> str:
  """Names a full hour: "une heure", "sept heures", "midi", "minuit", "vingt et une heures"."""
  if h24 % 24 == 0:
    return "minuit"
  if h24 == 12:
    return "midi"
  return "une heure" if h24 == 1 else f"{number_words(h24, fem=True)} heures"


_MINUTES = (0, 0, 0, 0, 5, 10, 15, 15, 20, 25, 30, 30, 30, 40, 45, 45, 50, 55)


def _time(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A clock time: "sept heures et demie", "dix-neuf heures trente", "midi"; form "de" adds "de"."""
  if form not in ("", "de"):
    raise ValueError(f"unknown fr time form {form!r}")
  while True:
    hour24 = int(
      _pick(
        rng, (5, 6, 6, 7, 7, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)
      )
    )
    minute = int(_pick(rng, _MINUTES))
    use24 = hour24 > 12 and rng.random() < 0.4  # The 24-hour clock is common in French.
    h24 = hour24 if use24 or hour24 == 12 else (hour24 - 1) % 12 + 1
    # 23:45 is "minuit moins le quart", 11:45 "midi moins le quart".
    nxt24 = hour24 + 1 if use24 or hour24 in (11, 23) else hour24 % 12 + 1
    base, nxt = _hours(h24), _hours(nxt24)
    if minute == 0:
      text = base
    elif minute == 30 and not use24:
      text = base + (" et demi" if h24 == 12 else " et demie")
    elif minute == 15 and not use24 and rng.random() < 0.6:
      text = base + " et quart"
    elif minute == 45 and not use24 and rng.random() < 0.6:
      text = nxt + " moins le quart"
    elif minute > 30 and not use24 and rng.random() < 0.5:
      text = f"{nxt} moins {number_words(60 - minute)}"
    else:
      text = f"{base} {number_words(minute)}"
    if not use24 and hour24 != 12 and rng.random() < 0.4:
      text += " du matin" if hour24 < 12 else " de l'après-midi" if hour24 < 18 else " du soir"
    if form != "de" or not text.startswith("une"):
      break
  return ("de" if form == "de" else ""), text, ""


def _date(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A day: "demain", "lundi prochain", "le premier mai"."""
  if form:
    raise ValueError(f"unknown fr date form {form!r}")
  r = rng.random()
  if r < 0.3:
    return "", _pick(rng, ("aujourd'hui", "demain", "demain", "après-demain", "ce week-end")), ""
  day = _pick(rng, _WEEKDAYS)
  if r < 0.55:
    return "", day, ""
  if r < 0.75:
    return "", _pick(rng, (f"{day} prochain", f"ce {day}", f"{day} qui vient")), ""
  dom = int(rng.integers(1, 29))
  return "", f"le {'premier' if dom == 1 else number_words(dom)} {_pick(rng, _MONTHS)}", ""


def _duration(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A timer length; form "de" ("un minuteur de cinq minutes") avoids "de une"."""
  if form not in ("", "de"):
    raise ValueError(f"unknown fr duration form {form!r}")
  while True:
    r = rng.random()
    if r < 0.55:
      n = int(_pick(rng, (1, 2, 3, 4, 5, 5, 6, 7, 8, 10, 10, 12, 15, 15, 20, 21, 25, 30, 40, 45)))
      text = f"{number_words(n, fem=True)} {'minute' if n == 1 else 'minutes'}"
    elif r < 0.7:
      text = f"{number_words(int(_pick(rng, (10, 15, 20, 30, 30, 45, 50, 90))))} secondes"
    elif r < 0.85:
      n = int(_pick(rng, (1, 1, 2, 3)))
      text = "une heure" if n == 1 else f"{number_words(n)} heures"
    else:
      text = _pick(
        rng,
        (
          "une demi-heure",
          "une heure et demie",
          "un quart d'heure",
          "trois quarts d'heure",
          "une minute et demie",
          "deux minutes et demie",
          f"une heure {number_words(int(_pick(rng, (10, 15, 20, 30))))}",
        ),
      )
    if form != "de" or not _starts_with_vowel(text):
      return ("de" if form == "de" else ""), text, ""


def _number(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  n = int(rng.integers(0, 16)) if rng.random() < 0.75 else 10 * int(rng.integers(2, 11))
  return "", number_words(n), ""


def _percent(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(5 * int(rng.integers(1, 21)))} pour cent", ""


def _temperature(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(int(rng.integers(16, 29)))} degrés", ""


GENERATORS = {
  "time": _time,
  "date": _date,
  "duration": _duration,
  "number": _number,
  "percent": _percent,
  "temperature": _temperature,
}

# ----------------------------------------------------------------------------
# Entities with gender, and their forms.

# fmt: off
_ROOMS = {  # room -> (gender, locative preposition)
  "cuisine": ("f", "dans"), "salon": ("m", "dans"), "chambre": ("f", "dans"),
  "salle de bain": ("f", "dans"), "salle à manger": ("f", "dans"), "bureau": ("m", "dans"),
  "couloir": ("m", "dans"), "cave": ("f", "dans"), "garage": ("m", "dans"),
  "chambre des enfants": ("f", "dans"), "chambre d'amis": ("f", "dans"),
  "grenier": ("m", "dans"), "buanderie": ("f", "dans"), "salle de jeux": ("f", "dans"),
  "véranda": ("f", "dans"), "terrasse": ("f", "sur"), "jardin": ("m", "dans"),
  "sous-sol": ("m", "dans"), "séjour": ("m", "dans"), "hall d'entrée": ("m", "dans"),
  "balcon": ("m", "sur"),
}
_DEVICES = {
  "télé": "f", "télévision": "f", "ventilateur": "m", "chauffage": "m", "climatisation": "f",
  "clim": "f", "cafetière": "f", "machine à laver": "f", "lave-vaisselle": "m",
  "sèche-linge": "m", "bouilloire": "f", "purificateur d'air": "m", "radio": "f",
  "radiateur": "m", "four": "m", "robot aspirateur": "m", "déshumidificateur": "m",
  "chauffe-eau": "m", "couverture chauffante": "f", "machine à café": "f", "hotte": "f",
  "ventilo": "m", "box internet": "f",
}
_PLACES = {
  "gare": "f", "gare routière": "f", "station-service la plus proche": "f",
  "pharmacie la plus proche": "f", "hôpital": "v", "supermarché": "m",
  "centre commercial": "m", "poste": "f", "bibliothèque": "f", "banque": "f",
  "salle de sport": "f", "parc": "m", "plage": "f", "musée": "m", "centre-ville": "m",
  "travail": "m", "bureau": "m", "café le plus proche": "m", "zoo": "m", "stade": "m",
  "université": "v", "hôtel": "v", "école": "v", "mairie": "f", "cinéma": "m",
  "marché": "m", "boulangerie la plus proche": "f", "parking le plus proche": "m",
  "port": "m", "maison": "f", "aéroport": "v", "piscine": "f", "commissariat": "m",
  "office de tourisme": "v", "crèche": "f",
}
_APPS = {
  "appareil photo": "v", "calendrier": "m", "paramètres": "mp", "réglages": "mp",
  "calculatrice": "f", "galerie": "f", "photos": "fp", "horloge": "v", "notes": "fp",
  "messages": "mp", "contacts": "mp", "navigateur": "m", "météo": "f", "doctolib": "0",
  "leboncoin": "0", "blablacar": "0", "deezer": "0", "vinted": "0", "lydia": "0", "ameli": "0",
  "sncf connect": "0", "molotov": "0", "mappy": "0", "allociné": "0", "france inter": "0",
}
# fmt: on
_GENDERED = {"device": _DEVICES, "place": _PLACES, "app": _APPS}


def _article(gender: str, value: str, prep: str = "") -> tuple[str, str]:
  """(words before, value) for "la gare", "à la gare", "au marché", "à l'hôtel", "du salon"."""
  if gender == "v":
    return prep, "l'" + value
  if gender == "0":
    return prep, value
  art = {"m": "le", "f": "la", "mp": "les", "fp": "les"}[gender]
  fused = {("à", "le"): "au", ("à", "les"): "aux", ("de", "le"): "du", ("de", "les"): "des"}
  if (prep, art) in fused:
    return fused[prep, art], value
  return f"{prep} {art}".strip(), value


def inflect(slot_type: str, value: str, form: str) -> tuple[str, str, str]:
  """Surface form of an entity: "def" (la télé), "gen" (du salon), "loc" (dans la cuisine),
  "a" (à la gare), and "de" (de / d' before names and infinitives)."""
  if not form:
    return "", value, ""
  if form == "de" and slot_type in ("artist", "contact", "task"):
    before, value = _elide("de", value)
    return before, value, ""
  if slot_type == "room" and form in ("def", "gen", "loc"):
    gender, prep = _ROOMS[value]
    prep = {"def": "", "gen": "de", "loc": prep}[form]
    before, value = _article(gender, value, prep)
    return before, value, ""
  if slot_type in _GENDERED and form in ("def", "gen", "a"):
    prep = {"def": "", "gen": "de", "a": "à"}[form]
    before, value = _article(_GENDERED[slot_type][value], value, prep)
    return before, value, ""
  raise ValueError(f"fr {slot_type} has no form {form!r}")


# ----------------------------------------------------------------------------
# Templates.

MACROS = {
  "pre": "[dis|hé|ok|euh|bon|alors]",
  "svp": "[s'il te plaît|s'il te plaît]",
  "peux": "(tu peux|est-ce que tu peux|tu pourrais|peux-tu|pourrais-tu)",
}

# fmt: off
TEMPLATES: dict[str, tuple[str, ...]] = {
  "play_music": (
    "$pre (mets|joue|lance) {song} [{artist:de}] [{room:loc}]",
    "$peux (mettre|jouer|lancer) {song} [sur {app}]",
    "(mets|joue) (un peu|de la musique|des chansons) {artist:de} [{room:loc}|sur {app}]",
    "je (veux|voudrais) écouter {song} [{artist:de}]",
    "joue la chanson {song} [sur {app}]",
    "mets-moi {song} $svp",
    "(mets|lance) {artist} en aléatoire",
    "j'ai envie (d'écouter|d'entendre) {artist}",
    "tu peux me mettre la chanson {song} {artist:de}",
  ),
  "pause_music": (
    "$pre (mets|fais) pause $svp",
    "(arrête|stoppe) la musique [{room:loc}]",
    "$peux (mettre en pause|arrêter) la musique",
    "pause [la musique] $svp",
    "(attends|une seconde) mets la musique en pause",
    "(éteins|coupe) la musique [{room:loc}]",
    "arrête la lecture [{room:loc}]",
    "mets la chanson en pause [j'ai un appel]",
  ),
  "next_track": (
    "$pre (chanson suivante|morceau suivant|suivant) $svp",
    "(passe|zappe) (cette chanson|ce morceau)",
    "passe à la (chanson|piste) suivante",
    "mets la chanson suivante",
    "$peux passer (cette chanson|au morceau suivant)",
    "j'aime pas cette chanson (passe|suivante|mets autre chose)",
    "(change de chanson|une autre chanson) $svp",
    "mets autre chose $svp",
  ),
  "volume_up": (
    "$pre (monte|augmente) le (son|volume) [un peu|un peu plus] [{room:loc}]",
    "(plus fort|un peu plus fort|encore plus fort) $svp",
    "$peux (monter|augmenter) le (son|volume)",
    "(j'entends rien|on n'entend rien) (monte le son|plus fort)",
    "mets (la musique|le son) plus fort",
    "(pousse|monte) (un peu|) le son",
    "(augmente|monte) le volume de la musique [{room:loc}]",
  ),
  "volume_down": (
    "$pre (baisse|diminue) le (son|volume) [un peu|un peu plus] [{room:loc}]",
    "(moins fort|un peu moins fort|plus doucement) $svp",
    "$peux (baisser|diminuer) le (son|volume)",
    "c'est (trop fort|beaucoup trop fort) [baisse le son]",
    "mets (la musique|le son) moins fort",
    "(baisse|diminue) un peu [le son]",
    "(baisse|diminue) le volume de la musique [{room:loc}]",
  ),
  "volume_set": (
    "$pre (mets|règle) le volume à {number}",
    "volume à {number} $svp",
    "$peux mettre le volume à {percent}",
    "(monte|baisse) le (son|volume) à {number}",
    "mets le son à {number} [{room:loc}]",
    "je veux le volume à {number}",
    "règle le volume de la musique sur {percent}",
    "niveau de volume {number}",
  ),
  "set_alarm": (
    "$pre mets (une alarme|un réveil) à {time} [{date}]",
    "réveille-moi à {time} [{date}]",
    "réveille-moi {date} à {time}",
    "$peux mettre une alarme pour {time} [{date}]",
    "(je dois me lever|il faut que je me lève) à {time} [{date}]",
    "alarme (à|pour) {time} [{date}] $svp",
    "(programme|crée) (une alarme|un réveil) pour {date} à {time}",
    "règle le réveil (à|sur|pour) {time} [{date}]",
  ),
  "cancel_alarm": (
    "$pre (supprime|annule|enlève) (l'alarme|mon alarme|le réveil) [{time:de}]",
    "(désactive|coupe) (l'alarme|le réveil) [pour {date}]",
    "ne me réveille pas {date}",
    "$peux (annuler|supprimer) (toutes les alarmes|l'alarme {time:de})",
    "je n'ai pas besoin de réveil {date}",
    "pas de réveil {date} $svp",
    "(supprime|efface) l'alarme que j'ai mise pour {date}",
    "(supprime|désactive) toutes mes alarmes",
  ),
  "set_timer": (
    "$pre mets un minuteur {duration:de}",
    "minuteur {duration:de} $svp",
    "$peux lancer un minuteur (pour {duration}|{duration:de})",
    "(compte|décompte) {duration}",
    "préviens-moi dans {duration}",
    "j'ai besoin d'un minuteur {duration:de} [pour les pâtes|pour les œufs|pour le four]",
    "règle le minuteur sur {duration}",
    "lance un compte à rebours {duration:de}",
  ),
  "set_reminder": (
    "$pre rappelle-moi {task:de} [{date}] [à {time}]",
    "rappelle-moi {date} qu'il faut {task}",
    "$peux me rappeler {task:de} [à {time}]",
    "(mets|crée|ajoute) un rappel pour {task} [{date}]",
    "(mets|crée) un rappel à {time} [{date}] pour {task}",
    "n'oublie pas de me rappeler {task:de} [{date}]",
    "fais-moi penser à {task} [{date}]",
    "rappel {date} à {time} {task}",
  ),
  "call_contact": (
    "$pre appelle {contact} $svp [sur haut-parleur]",
    "(téléphone à|passe un coup de fil à) {contact}",
    "$peux appeler {contact}",
    "(lance|passe) un appel à {contact}",
    "(je veux|je voudrais|j'aimerais) (appeler|parler à) {contact}",
    "(fais|lance) un appel vidéo (à|avec) {contact}",
    "compose le numéro {contact:de}",
    "joins {contact} [au téléphone]",
  ),
  "send_message": (
    "$pre envoie un (message|texto|sms) à {contact} pour (dire|lui dire) que {message}",
    "dis à {contact} que {message}",
    "(écris|envoie un texto) à {contact} que {message}",
    "$peux envoyer un message à {contact} pour dire que {message}",
    "préviens {contact} que {message}",
    "(envoie|écris) un whatsapp à {contact} {message}",
    "(je veux|je voudrais) dire à {contact} que {message}",
    "réponds à {contact} que {message}",
  ),
  "get_weather": (
    "$pre quel temps fait-il [à {city}] [{date}]",
    "quel temps va-t-il faire [à {city}] {date}",
    "(c'est quoi|quelle est) la météo [à {city}] [{date}]",
    "$peux me donner la météo (pour|à) {city}",
    "est-ce qu'il va pleuvoir [à {city}] [{date}]",
    "(est-ce que je prends un parapluie|il me faut un parapluie) {date}",
    "(donne-moi|dis-moi) les prévisions (pour {date}|à {city})",
    "il fait (combien|quelle température) à {city}",
    "va-t-il (neiger|faire beau) à {city} {date}",
  ),
  "get_time": (
    "$pre quelle heure est-il [à {city}] [maintenant]",
    "(il est|c'est) quelle heure [à {city}]",
    "$peux me dire l'heure [à {city}]",
    "quelle heure est-il en ce moment à {city}",
    "(tu as l'heure|t'as l'heure)",
    "l'heure à {city} $svp",
    "donne-moi l'heure [à {city}]",
    "quelle est l'heure locale à {city}",
  ),
  "lights_on": (
    "$pre allume la lumière [{room:gen}]",
    "allume (la lumière|les lumières|les lampes) {room:loc}",
    "(mets|fais) de la lumière [{room:loc}]",
    "$peux allumer (la lumière|les lumières) [{room:gen}]",
    "il fait (trop sombre|tout noir|sombre) {room:loc} [allume la lumière]",
    "éclaire {room:def}",
    "j'ai besoin de lumière {room:loc}",
    "allume toutes les lumières [{room:gen}]",
  ),
  "lights_off": (
    "$pre éteins la lumière [{room:gen}]",
    "éteins (la lumière|les lumières|les lampes) {room:loc}",
    "coupe la lumière [{room:gen}]",
    "$peux éteindre (la lumière|les lumières) [{room:gen}]",
    "(je vais me coucher|bonne nuit) éteins (tout|toutes les lumières)",
    "fais le noir {room:loc}",
    "pas besoin de lumière {room:loc} [éteins]",
    "éteins toutes les lumières [{room:gen}]",
  ),
  "lights_dim": (
    "$pre (baisse|tamise) la lumière [{room:gen}] [à {percent}]",
    "(mets|règle) la lumière [{room:gen}] à {percent}",
    "$peux baisser l'intensité de la lumière [{room:loc}]",
    "(mets|fais) une lumière plus (douce|tamisée) [{room:loc}]",
    "la lumière est trop forte [{room:loc}]",
    "luminosité à {percent} [{room:loc}]",
    "(diminue|réduis) la luminosité [{room:loc}] [à {percent}]",
    "tamise les lumières [{room:gen}]",
  ),
  "set_temperature": (
    "$pre mets le chauffage à {temperature} [{room:loc}]",
    "(monte|baisse) le chauffage à {temperature}",
    "$peux régler la température à {temperature}",
    "je veux {temperature} {room:loc}",
    "(règle|mets) le thermostat (à|sur) {temperature}",
    "(chauffe|réchauffe) {room:def} à {temperature}",
    "(change|règle) la température [{room:gen}] à {temperature}",
    "(mets|règle) la clim à {temperature}",
  ),
  "device_on": (
    "$pre allume {device:def} [{room:gen}]",
    "(mets|lance) {device:def} $svp",
    "$peux allumer {device:def}",
    "(démarre|mets en marche) {device:def}",
    "je veux que tu allumes {device:def}",
    "allume-moi {device:def} $svp",
    "allume {device:def} {room:loc}",
    "mets en route {device:def} [{room:gen}]",
  ),
  "device_off": (
    "$pre éteins {device:def} [{room:gen}]",
    "(coupe|arrête) {device:def} $svp",
    "$peux éteindre {device:def}",
    "(désactive|mets à l'arrêt) {device:def}",
    "je veux que tu éteignes {device:def}",
    "éteins-moi {device:def} $svp",
    "éteins {device:def} {room:loc}",
    "(plus besoin|pas besoin) {device:gen} [éteins]",
  ),
  "navigate_to": (
    "$pre (emmène-moi|conduis-moi|guide-moi) {place:a}",
    "comment (aller|je vais) {place:a}",
    "(montre-moi|donne-moi) (le chemin|l'itinéraire) pour aller {place:a}",
    "$peux (me guider|m'emmener) {place:a}",
    "(allons|on va) à {city}",
    "(lance|démarre) la navigation (vers|jusqu'à) {city}",
    "(itinéraire|trajet) (vers|pour) {city} [sans péage|en évitant l'autoroute]",
    "je (dois|veux) aller {place:a} [tout de suite]",
  ),
  "add_to_list": (
    "$pre ajoute {item} à la liste de courses",
    "mets {item} sur la liste [de courses]",
    "$peux ajouter {item} à ma liste",
    "note {item} sur la liste [des courses]",
    "il faut racheter {item} [mets ça sur la liste]",
    "liste de courses ajoute {item}",
    "rajoute {item} à la liste $svp",
    "pense à mettre {item} sur la liste",
  ),
  "open_app": (
    "$pre ouvre {app:def}",
    "(lance|démarre) {app:def}",
    "$peux ouvrir {app:def}",
    "(va sur|passe sur) {app:def}",
    "je (veux|voudrais) (ouvrir|utiliser) {app:def}",
    "(montre-moi|affiche) {app:def}",
    "(ouvre|lance) (l'application|l'appli) {app}",
    "emmène-moi sur {app:def}",
  ),
  "translate": (
    "$pre comment (dit-on|on dit|est-ce qu'on dit) {phrase} en {language}",
    "traduis {phrase} en {language}",
    "c'est quoi {phrase} en {language}",
    "$peux traduire {phrase} en {language}",
    "comment je dis {phrase} en {language}",
    "(dis|dis-moi) {phrase} en {language}",
    "comment se dit {phrase} en {language}",
    "(je voudrais|j'aimerais) savoir comment on dit {phrase} en {language}",
  ),
}
# fmt: on

CODE_SWITCH: dict[str, dict[str, tuple[str, ...]]] = {}
SWITCHABLE: dict[str, tuple[str, ...]] = {}

# ----------------------------------------------------------------------------
# Entities.

# fmt: off
_FIRST_NAMES = (
  "jean", "marie", "pierre", "michel", "philippe", "nathalie", "isabelle", "sylvie",
  "catherine", "françoise", "alain", "patrick", "nicolas", "christophe", "stéphane",
  "sébastien", "julien", "thomas", "camille", "léa", "manon", "chloé", "emma", "louise", "jade",
  "alice", "lina", "rose", "anna", "inès", "léna", "juliette", "zoé", "sarah", "lucas", "hugo",
  "louis", "gabriel", "arthur", "jules", "raphaël", "adam", "léo", "nathan", "théo", "maël",
  "paul", "sacha", "noah", "tom", "ethan", "mathis", "clément", "antoine", "maxime",
  "alexandre", "romain", "vincent", "françois", "laurent", "olivier", "éric", "frédéric",
  "david", "thierry", "pascal", "bernard", "didier", "christian", "daniel", "gérard",
  "céline", "sandrine", "valérie", "sophie", "caroline", "véronique", "aurélie", "émilie",
  "julie", "laura", "pauline", "mathilde", "charlotte", "margaux", "élodie", "amélie",
  "claire", "hélène", "brigitte", "monique", "nicole", "martine", "christine", "anne",
  "agathe", "capucine", "apolline", "ambre", "benoît",
)
_SURNAMES = (
  "martin", "bernard", "dubois", "thomas", "robert", "richard", "petit", "durand", "leroy",
  "moreau", "simon", "laurent", "lefebvre", "michel", "garcia", "david", "bertrand", "roux",
  "vincent", "fournier", "morel", "girard", "andré", "lefèvre", "mercier", "dupont", "lambert",
  "bonnet", "françois", "martinez", "legrand", "garnier", "faure", "rousseau", "blanc", "guérin",
  "muller", "henry", "roussel", "nicolas", "perrin", "morin", "mathieu", "clément", "gauthier",
  "dumont", "lopez", "fontaine", "chevalier", "robin",
)
_RELATIVES = (
  "maman", "papa", "mamie", "papi", "ma femme", "mon mari", "ma sœur", "mon frère", "mon fils",
  "ma fille", "mon patron", "ma patronne", "tata sylvie", "tonton marc", "ma mère", "mon père",
  "ma belle-mère",
)
# fmt: on

# fmt: off
ENTITIES: dict[str, tuple[str, ...]] = {
  "contact": _FIRST_NAMES
  + _RELATIVES
  + tuple(f"{f} {s}" for f, s in zip(_FIRST_NAMES[1::2], _SURNAMES, strict=True)),
  "song": (
    "la vie en rose", "non je ne regrette rien", "hymne à l'amour", "ne me quitte pas",
    "la bohème", "les champs-élysées", "comme d'habitude", "la mer", "douce france",
    "le métèque", "les feuilles mortes", "la javanaise", "je t'aime moi non plus",
    "comic strip", "le poinçonneur des lilas", "l'aigle noir", "dis quand reviendras-tu",
    "la maladie d'amour", "femme libérée", "mistral gagnant", "foule sentimentale",
    "j'ai demandé à la lune", "l'aventurier", "ça plane pour moi", "alors on danse",
    "papaoutai", "formidable", "tous les mêmes", "santé", "balance ton quoi",
    "la thune", "djadja", "pookie", "je veux", "tout oublier", "dernière danse", "sapés comme jamais",
    "bella", "ma philosophie", "la grenade", "tout le bonheur du monde", "le sud",
    "les lacs du connemara", "en apesanteur", "quelqu'un m'a dit", "la corrida",
    "petite marie", "la boulette", "joe le taxi", "voyage voyage", "ouragan",
    "marcia baïla", "toute première fois", "le chanteur", "pour que tu m'aimes encore",
    "je vole", "la lettre", "quand la musique est bonne", "belle", "les démons de minuit",
    "à nos souvenirs", "tombé", "basique", "la kiffance", "tous les cris les sos",
    "mourir sur scène", "bambina", "je te promets", "que je t'aime", "allumer le feu",
    "savoir aimer", "confessions nocturnes", "magnolias for ever", "le lac majeur",
    "la ballade des gens heureux", "les copains d'abord", "la mauvaise réputation",
    "emmenez-moi", "avec le temps", "il venait d'avoir dix-huit ans", "la foule", "milord",
    "padam padam", "la complainte de la butte", "sous le ciel de paris", "l'hymne de nos campagnes",
    "frère jacques", "au clair de la lune", "une souris verte", "il était un petit navire",
    "sur le pont d'avignon", "alouette", "meunier tu dors", "vive le vent",
    "petit papa noël", "la marseillaise", "il est cinq heures paris s'éveille",
    "la montagne", "nuit de folie", "les mots bleus", "l'été indien", "salut les amoureux",
    "ces soirées-là", "le temps des cerises", "résiste", "ella elle l'a", "évidemment",
    "la tendresse", "fais-moi une place", "rien de rien",
  ),
  "artist": (
    "édith piaf", "charles aznavour", "jacques brel", "serge gainsbourg", "johnny hallyday",
    "françoise hardy", "georges brassens", "léo ferré", "barbara", "dalida",
    "michel sardou", "claude françois", "joe dassin", "michel polnareff", "alain souchon",
    "laurent voulzy", "francis cabrel", "jean-jacques goldman", "renaud", "indochine",
    "téléphone", "noir désir", "mylène farmer", "vanessa paradis", "patricia kaas",
    "céline dion", "garou", "zaz", "stromae", "angèle", "christine and the queens",
    "aya nakamura", "jul", "pnl", "nekfeu", "orelsan", "booba", "soprano", "maître gims",
    "gims", "vianney", "kendji girac", "louane", "indila", "m pokora", "calogero",
    "pascal obispo", "florent pagny", "patrick bruel", "julien clerc", "véronique sanson",
    "michel berger", "france gall", "sylvie vartan", "juliette armanet", "clara luciani",
    "pomme", "benjamin biolay", "étienne daho", "daft punk", "air", "phoenix", "justice",
    "eddy mitchell", "david guetta", "bob sinclar", "mc solaar", "iam", "ntm", "diam's",
    "grand corps malade", "bénabar", "les rita mitsouko", "niagara", "lomepal",
    "bigflo et oli", "slimane", "amir", "tal", "shy'm", "sexion d'assaut", "yves montand",
    "charles trenet", "henri salvador", "nino ferrer", "jacques dutronc", "alain bashung",
    "hubert-félix thiéfaine", "mano solo", "matthieu chedid", "louise attaque",
  ),
  "city": (
    "paris", "marseille", "lyon", "toulouse", "nice", "nantes", "montpellier",
    "strasbourg", "bordeaux", "lille", "rennes", "reims", "toulon", "saint-étienne",
    "grenoble", "dijon", "angers", "nîmes", "villeurbanne", "clermont-ferrand", "aix-en-provence",
    "brest", "tours", "amiens", "limoges", "annecy", "perpignan", "metz", "besançon",
    "orléans", "rouen", "mulhouse", "caen", "nancy", "argenteuil", "montreuil", "roubaix",
    "tourcoing", "avignon", "poitiers", "versailles", "pau", "calais", "la rochelle",
    "cannes", "antibes", "ajaccio", "bastia", "colmar", "chambéry", "biarritz", "bayonne",
    "lourdes", "saint-malo", "quimper", "lorient", "vannes", "cherbourg", "dunkerque",
    "boulogne-sur-mer", "arras", "troyes", "chartres", "valence", "montélimar", "arles",
    "carcassonne", "narbonne", "béziers", "sète", "albi", "cahors", "périgueux",
    "angoulême", "niort", "saint-nazaire", "laval", "vichy", "nevers", "bourges",
    "auxerre", "épinal", "belfort", "gap", "briançon", "chamonix", "menton", "fréjus",
    "saint-tropez", "bruxelles", "liège", "namur", "charleroi", "genève", "lausanne",
    "montréal", "québec", "dakar", "abidjan", "casablanca", "rabat", "tunis", "alger",
    "londres", "berlin", "madrid", "rome", "lisbonne", "amsterdam", "vienne", "prague",
    "barcelone", "milan", "venise", "new york", "tokyo", "pékin", "moscou", "istanbul",
  ),
  "place": tuple(_PLACES),
  "room": tuple(_ROOMS),
  "device": tuple(_DEVICES),
  "app": tuple(_APPS),
  "item": (
    "du lait", "des œufs", "du pain", "du beurre", "du café", "des pommes", "des bananes",
    "du papier toilette", "du liquide vaisselle", "du jus d'orange", "des blancs de poulet",
    "de la viande hachée", "du fromage", "des yaourts", "des céréales", "du riz",
    "des pâtes", "des tomates", "des oignons", "de l'ail", "des pommes de terre",
    "de l'huile d'olive", "de la confiture de fraises", "de l'essuie-tout", "de la lessive",
    "des piles", "des ampoules", "du shampoing", "du dentifrice", "des croquettes pour le chien",
    "de la litière", "de la glace", "une pizza surgelée", "du saumon", "de la salade",
    "des carottes", "des avocats", "des citrons", "de la farine", "du sucre", "du sel",
    "du poivre", "du thé", "de l'eau gazeuse", "de la bière", "du vin rouge", "des chips",
    "des biscuits", "des flocons d'avoine", "du miel", "du ketchup", "de la moutarde",
    "de la mayonnaise", "des croissants", "du fromage frais", "de la crème fraîche",
    "des épinards", "du brocoli", "des champignons", "des poivrons", "des concombres",
    "du raisin", "des myrtilles", "des sacs poubelle", "du papier aluminium", "des couches",
    "des lingettes", "de la crème solaire", "une baguette", "du jambon", "des lardons",
    "du camembert", "des clémentines",
  ),
  "task": (
    "appeler le dentiste", "sortir les poubelles", "arroser les plantes",
    "chercher les enfants", "prendre mes médicaments", "payer la facture d'électricité",
    "acheter du lait", "promener le chien", "appeler ma mère", "envoyer le rapport",
    "réserver une table pour ce soir", "renouveler mon passeport",
    "récupérer le linge au pressing", "nourrir le chat", "surveiller le four",
    "déplacer la voiture", "recharger mon téléphone", "rendre les livres à la bibliothèque",
    "acheter un cadeau d'anniversaire", "prendre rendez-vous chez le coiffeur",
    "boire de l'eau", "fermer la porte à clé", "souhaiter bon anniversaire à mamie",
    "passer à la banque", "faire les courses",
  ),
  "message": (
    "je serai en retard", "j'arrive dans dix minutes", "je suis en route",
    "le dîner est prêt", "la réunion est à trois heures", "je suis dans les bouchons",
    "je te rappelle plus tard", "tu me manques", "je t'aime", "je suis au supermarché",
    "je quitte le bureau", "j'ai oublié mes clés", "j'ai les billets",
    "les enfants dorment", "nous n'avons plus de lait", "je passe te chercher après l'école",
    "j'arrive bientôt", "le colis est arrivé", "je rentre pour le dîner",
    "le train a du retard", "je suis devant", "ça tombe des cordes ici",
  ),
  "phrase": (
    "bonjour", "merci beaucoup", "où sont les toilettes", "combien ça coûte",
    "je ne comprends pas", "enchanté", "bonne nuit", "excusez-moi", "je suis désolé",
    "l'addition s'il vous plaît", "vous parlez anglais", "je t'aime", "joyeux anniversaire",
    "à demain", "où est la gare", "j'ai faim", "pouvez-vous m'aider",
    "comment tu t'appelles", "comment ça va", "bonne journée", "santé",
    "je suis allergique aux arachides",
  ),
  "language": (
    "anglais", "espagnol", "allemand", "italien", "portugais", "chinois", "japonais",
    "coréen", "russe", "hindi", "arabe", "néerlandais", "turc", "grec", "polonais", "suédois",
  ),
}
# fmt: on
