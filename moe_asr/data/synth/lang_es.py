"""Spanish commands (Spain and Latin America): templates, entities, spelled numbers and times.

See `grammar.py` for the template syntax and what a language module provides.
Nouns that need an article carry a gender code ("m", "f", "mp", "fp", or "0"
for nouns used without article, like "casa" in "llévame a casa"), from which
`inflect` builds "la cocina", "en la cocina", "del salón", "al aeropuerto".
"""

from __future__ import annotations

import numpy as np

LANG = "es"

# ----------------------------------------------------------------------------
# Numbers, times, dates, durations.

_UNITS = (
  "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince "
  "dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés "
  "veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve"
).split()
_TENS = "_ _ veinte treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()
_WEEKDAYS = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
_MONTHS = (
  "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre"
).split()


def number_words(n: int, gender: str = "m") -> str:
  """Spells 0 <= n <= 100.

  Args:
    n: the number.
    gender: "m" for counting ("veintiuno"), "apoc" before a masculine noun
      ("veintiún grados"), "f" before a feminine noun ("veintiuna horas").

  Returns:
    The number in words.
  """
  if not 0 <= n <= 100:
    raise ValueError(f"number out of range: {n}")
  if n == 100:
    return "cien"
  text = _UNITS[n] if n < 30 else _TENS[n // 10] + ("" if n % 10 == 0 else " y " + _UNITS[n % 10])
  if text.endswith("uno") and gender != "m":
    text = text[:-1] if gender == "apoc" else text[:-1] + "a"
    text = text.replace("veintiun", "veintiún")
  return text


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _hour(h: int) -> str:
  return "la una" if h == 1 else "las " + number_words(h)


_MINUTES = (0, 0, 0, 0, 5, 10, 15, 15, 20, 25, 30, 30, 30, 40, 45, 45, 50, 55)


def _time(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A clock time with its article: "las siete y media de la tarde"."""
  if form:
    raise ValueError(f"unknown es time form {form!r}")
  if rng.random() < 0.05:
    return "", _pick(rng, ("mediodía", "medianoche")), ""
  hour24 = int(
    _pick(rng, (5, 6, 6, 7, 7, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23))
  )
  hour = (hour24 - 1) % 12 + 1
  minute = int(_pick(rng, _MINUTES))
  nxt = hour % 12 + 1
  if minute == 0:
    text = _hour(hour) + _pick(rng, ("", "", " en punto"))
  elif minute == 30:
    text = _hour(hour) + _pick(rng, (" y media", " y media", " treinta"))
  elif minute == 15:
    text = _hour(hour) + " y cuarto"
  elif minute == 45:
    text = _pick(rng, (_hour(nxt) + " menos cuarto", _hour(hour) + " cuarenta y cinco"))
  elif minute > 30 and rng.random() < 0.6:
    text = f"{_hour(nxt)} menos {number_words(60 - minute)}"
  else:
    text = f"{_hour(hour)} y {number_words(minute)}"
  if rng.random() < 0.45:
    if hour24 < 6:
      text += " de la madrugada"
    elif hour24 < 12:
      text += " de la mañana"
    elif hour24 < 20:
      text += " de la tarde"
    else:
      text += " de la noche"
  return "", text, ""


def _date(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A day: "mañana", "el lunes", "el próximo viernes", "el cinco de mayo"."""
  if form:
    raise ValueError(f"unknown es date form {form!r}")
  r = rng.random()
  if r < 0.3:
    return "", _pick(rng, ("hoy", "mañana", "mañana", "pasado mañana", "este fin de semana")), ""
  day = _pick(rng, _WEEKDAYS)
  if r < 0.55:
    return "", "el " + day, ""
  if r < 0.75:
    return "", _pick(rng, (f"el próximo {day}", f"el {day} que viene", f"este {day}")), ""
  dom = int(rng.integers(1, 29))
  dom_text = "primero" if dom == 1 else number_words(dom)
  return "", f"el {dom_text} de {_pick(rng, _MONTHS)}", ""


def _duration(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  if form:
    raise ValueError(f"unknown es duration form {form!r}")
  r = rng.random()
  if r < 0.55:
    n = int(_pick(rng, (1, 2, 3, 4, 5, 5, 6, 7, 8, 10, 10, 12, 15, 15, 20, 21, 25, 30, 40, 45)))
    text = f"{number_words(n, 'apoc')} {'minuto' if n == 1 else 'minutos'}"
  elif r < 0.7:
    n = int(_pick(rng, (10, 15, 20, 30, 30, 45, 50, 90)))
    text = f"{number_words(n, 'apoc')} segundos"
  elif r < 0.85:
    n = int(_pick(rng, (1, 1, 2, 3)))
    text = "una hora" if n == 1 else f"{number_words(n, 'f')} horas"
  else:
    text = _pick(
      rng,
      (
        "media hora",
        "hora y media",
        "una hora y media",
        "un cuarto de hora",
        "minuto y medio",
        "tres cuartos de hora",
        f"una hora y {number_words(int(_pick(rng, (10, 15, 20, 45))), 'apoc')} minutos",
      ),
    )
  return "", text, ""


def _number(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  n = int(rng.integers(0, 16)) if rng.random() < 0.75 else 10 * int(rng.integers(2, 11))
  return "", number_words(n), ""


def _percent(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(5 * int(rng.integers(1, 21)), 'apoc')} por ciento", ""


def _temperature(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(int(rng.integers(16, 29)), 'apoc')} grados", ""


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
_ROOMS = {
  "cocina": "f", "salón": "m", "sala": "f", "dormitorio": "m", "habitación": "f", "recámara": "f",
  "baño": "m", "comedor": "m", "pasillo": "m", "despacho": "m", "garaje": "m",
  "cuarto de los niños": "m", "cuarto de invitados": "m", "estudio": "m", "terraza": "f",
  "jardín": "m", "lavadero": "m", "sótano": "m", "entrada": "f", "habitación de matrimonio": "f",
}
_DEVICES = {
  "tele": "f", "televisión": "f", "ventilador": "m", "aire acondicionado": "m",
  "calefacción": "f", "cafetera": "f", "lavadora": "f", "lavavajillas": "m", "secadora": "f",
  "hervidor": "m", "humidificador": "m", "aspiradora": "f", "robot aspirador": "m",
  "purificador de aire": "m", "radio": "f", "altavoz": "m", "calefactor": "m", "horno": "m",
  "impresora": "f", "deshumidificador": "m", "estufa": "f", "termo": "m", "manta eléctrica": "f",
}
_PLACES = {
  "aeropuerto": "m", "estación de tren": "f", "estación de autobuses": "f",
  "gasolinera más cercana": "f", "farmacia más cercana": "f", "hospital": "m",
  "supermercado": "m", "centro comercial": "m", "correos": "0", "biblioteca": "f",
  "banco": "m", "gimnasio": "m", "parque": "m", "playa": "f", "museo": "m", "centro": "m",
  "trabajo": "m", "oficina": "f", "cafetería más cercana": "f", "zoológico": "m",
  "estadio": "m", "universidad": "f", "hotel": "m", "dentista": "m", "colegio": "m",
  "ferretería más cercana": "f", "ayuntamiento": "m", "cine": "m", "mercado": "m",
  "veterinario": "m", "aparcamiento más cercano": "m", "casa": "0", "casa de mi madre": "0",
  "puerto": "m", "polideportivo": "m",
}
_APPS = {
  "cámara": "f", "calendario": "m", "calculadora": "f", "ajustes": "mp", "galería": "f",
  "correo": "m", "notas": "fp", "reloj": "m", "mensajes": "mp", "contactos": "mp",
  "navegador": "m", "agenda": "f", "linterna": "f", "grabadora": "f", "wallapop": "0",
  "cabify": "0", "glovo": "0", "bizum": "0", "idealista": "0", "rappi": "0", "mercado libre": "0",
  "mercado pago": "0", "pedidos ya": "0", "renfe": "0", "fotocasa": "0", "infojobs": "0",
  "milanuncios": "0",
}
# fmt: on
_GENDERED = {"room": _ROOMS, "device": _DEVICES, "place": _PLACES, "app": _APPS}
_ARTICLES = {"m": "el", "f": "la", "mp": "los", "fp": "las", "0": ""}


def inflect(slot_type: str, value: str, form: str) -> tuple[str, str, str]:
  """Surface form of an entity: forms "def" (la cocina), "loc" (en la cocina), "gen"
  (de la cocina, del salón) and "a" (a la playa, al aeropuerto)."""
  if not form:
    return "", value, ""
  gender = _GENDERED.get(slot_type, {}).get(value)
  if gender is None:
    raise ValueError(f"es {slot_type} {value!r} has no form {form!r}")
  art = _ARTICLES[gender]
  if form == "def":
    before = art
  elif form == "loc":
    before = f"en {art}"
  elif form == "gen":
    before = "del" if gender == "m" else f"de {art}"
  elif form == "a":
    before = "al" if gender == "m" else f"a {art}"
  else:
    raise ValueError(f"unknown es form {form!r}")
  return before.strip(), value, ""


# ----------------------------------------------------------------------------
# Templates.

MACROS = {
  "pre": "[oye|a ver|bueno|eh|hola]",
  "pf": "[por favor]",
  "puedes": "(puedes|podrías|me haces el favor de)",
}

# fmt: off
TEMPLATES: dict[str, tuple[str, ...]] = {
  "play_music": (
    "$pre (pon|ponme|reproduce) {song} [de {artist}] [{room:loc}]",
    "$pre $puedes poner {song} [en {app}]",
    "(pon|ponme) (algo|música|canciones) de {artist} [{room:loc}|en {app}]",
    "(quiero|me apetece|tengo ganas de) escuchar {song} [de {artist}]",
    "reproduce la canción {song} [en {app}]",
    "(pon|ponme) un poco de {artist} $pf",
    "reproduce (música|canciones) de {artist} en modo aleatorio",
    "(quiero oír|déjame oír) algo de {artist}",
    "(pon|ponme) la canción de {artist} que se llama {song}",
  ),
  "pause_music": (
    "$pre (pausa|para) la música [{room:loc}]",
    "(pon|ponle) pausa [a la música|a la canción] $pf",
    "$puedes (pausar|parar|detener) la (música|canción) [un momento|un segundo]",
    "(espera|un momento) (pausa|para) [la música|esto]",
    "(quita|apaga) la música [{room:loc}]",
    "deja de poner música [{room:loc}]",
    "para la canción [que me están llamando|que tengo una llamada]",
  ),
  "next_track": (
    "$pre (siguiente|la siguiente|siguiente canción) $pf",
    "(pasa|salta) (esta canción|a la siguiente) $pf",
    "pon la siguiente (canción|pista)",
    "$puedes (pasar|saltar) esta canción",
    "no me gusta esta canción (pon otra|pásala|siguiente)",
    "(cambia de canción|pon otra canción|otra canción) $pf",
    "(salta|pasa) a la próxima [canción]",
  ),
  "volume_up": (
    "$pre sube el volumen [un poco|un poquito|un poco más] [{room:loc}]",
    "(más alto|más fuerte|un poco más alto) $pf",
    "$puedes subir el volumen [un poco]",
    "(no se oye nada|no oigo nada|no se escucha) sube (el volumen|la música)",
    "(súbele|súbele al volumen|súbele a la música) [un poco]",
    "pon (la música|el volumen) más (alto|fuerte)",
    "aumenta el volumen [{room:loc}]",
    "volumen más alto $pf",
  ),
  "volume_down": (
    "$pre baja el volumen [un poco|un poquito] [{room:loc}]",
    "(más bajo|más bajito|un poco más bajo) $pf",
    "$puedes bajar el volumen [un poco]",
    "(la música está muy alta|está demasiado alto) [bájalo|baja el volumen]",
    "(bájale|bájale al volumen|bájale a la música) [un poco]",
    "pon la música más (baja|bajita|suave)",
    "(disminuye|reduce) el volumen [{room:loc}]",
    "volumen más bajo $pf",
  ),
  "volume_set": (
    "$pre (pon|deja) el volumen (a|en) {number}",
    "volumen (a|en) {number} $pf",
    "$puedes poner el volumen al {percent}",
    "(sube|baja) el volumen (a|hasta) {number}",
    "pon el volumen de la música (en|a) {number} [{room:loc}]",
    "quiero el volumen (en|a) {number}",
    "ajusta el volumen al {percent}",
    "nivel de volumen {number}",
  ),
  "set_alarm": (
    "$pre (pon|ponme) (una|la) alarma (a|para) {time} [{date}]",
    "despiértame (a|sobre) {time} [{date}]",
    "despiértame {date} a {time}",
    "$puedes poner una alarma para {time} [{date}]",
    "(necesito|quiero) (levantarme|despertarme) a {time} [{date}]",
    "alarma (a|para) {time} [{date}] $pf",
    "(crea|programa) una alarma para {date} a {time}",
    "(programa|pon) el despertador (a|para) {time} [{date}]",
  ),
  "cancel_alarm": (
    "$pre (cancela|quita|borra|elimina) (la|mi) alarma [de {time}] [para {date}]",
    "desactiva la alarma [de {time}] $pf",
    "no me despiertes {date}",
    "$puedes (quitar|cancelar) (todas las alarmas|la alarma de {time})",
    "ya no necesito la alarma (de {time}|para {date})",
    "(apaga|quita) el despertador [para {date}]",
    "no quiero alarma {date}",
    "borra la alarma que puse (a {time}|para {date})",
  ),
  "set_timer": (
    "$pre pon un temporizador de {duration}",
    "(pon|ponme) el temporizador a {duration}",
    "temporizador de {duration} $pf",
    "$puedes contar {duration}",
    "avísame (en|dentro de) {duration}",
    "necesito un temporizador de {duration} [para la pasta|para los huevos|para el horno]",
    "(activa|inicia) una cuenta atrás de {duration}",
    "programa un temporizador para {duration}",
  ),
  "set_reminder": (
    "$pre recuérdame {task} [{date}] [a {time}]",
    "recuérdame {date} que tengo que {task}",
    "$puedes recordarme {task} [a {time}]",
    "(pon|ponme|crea) un recordatorio para {task} [{date}]",
    "(crea|añade|pon) un recordatorio a {time} [{date}] para {task}",
    "que no se me olvide {task} [{date}]",
    "necesito que me recuerdes {task} [a {time}]",
    "avísame {date} a {time} (para|de que tengo que) {task}",
  ),
  "call_contact": (
    "$pre llama a {contact} $pf [con el altavoz]",
    "(marca a|márcale a|telefonea a) {contact}",
    "$puedes llamar a {contact}",
    "(hazle|haz) una (llamada|videollamada) a {contact}",
    "(quiero|necesito) (llamar a|hablar con) {contact}",
    "(ponme con|comunícame con) {contact}",
    "llámame a {contact} $pf",
    "videollamada (a|con) {contact}",
  ),
  "send_message": (
    "$pre (manda|envía|mándale) un mensaje a {contact} (diciendo que|que diga) {message}",
    "dile a {contact} que {message}",
    "(escríbele|mándale un whatsapp) a {contact} (que|diciendo que) {message}",
    "$puedes (mandar|enviar) un mensaje a {contact} diciendo que {message}",
    "avisa a {contact} de que {message}",
    "(manda|envía) un (mensaje de texto|whatsapp) a {contact} que diga {message}",
    "(quiero|necesito) (mandarle|escribirle) a {contact} que {message}",
    "contesta a {contact} que {message}",
  ),
  "get_weather": (
    "$pre qué tiempo hace [en {city}]",
    "qué tiempo (va a hacer|hará) [en {city}] {date}",
    "(cómo está|cómo va a estar) el tiempo [en {city}] [{date}]",
    "$puedes decirme el (tiempo|pronóstico) (de|en) {city} [para {date}]",
    "(va a llover|va a nevar|lloverá) [en {city}] [{date}]",
    "(necesito|me llevo) (paraguas|el paraguas) {date}",
    "(dame|dime) el pronóstico del tiempo (para {date}|en {city})",
    "(qué temperatura|cuántos grados) hace [en {city}]",
    "va a hacer (frío|calor) [en {city}] {date}",
  ),
  "get_time": (
    "$pre qué hora es [en {city}] [ahora]",
    "(dime|me dices) la hora [en {city}] $pf",
    "$puedes decirme (la hora|qué hora es) [en {city}]",
    "qué hora es ahora [mismo] en {city}",
    "(tienes hora|me das la hora|sabes qué hora es)",
    "la hora en {city} $pf",
    "qué horas son [en {city}]",
    "cuál es la hora local en {city}",
  ),
  "lights_on": (
    "$pre (enciende|prende) (la luz|las luces) [{room:gen}]",
    "(enciende|prende) (la luz|las luces) {room:loc}",
    "(da|pon) la luz [{room:gen}] $pf",
    "$puedes (encender|prender) (la luz|las luces) [{room:gen}]",
    "(no se ve nada|está muy oscuro) {room:loc} [enciende la luz]",
    "(ilumina|alumbra) {room:def}",
    "(quiero|necesito) luz {room:loc}",
    "(activa|conecta) las luces [{room:gen}]",
  ),
  "lights_off": (
    "$pre apaga (la luz|las luces) [{room:gen}]",
    "apaga (la luz|las luces) {room:loc}",
    "(quita|corta) la luz [{room:gen}]",
    "$puedes apagar (la luz|las luces) [{room:gen}]",
    "(me voy a dormir|buenas noches) apaga [todas] las luces",
    "deja {room:def} a oscuras",
    "(desactiva|desconecta) las luces [{room:gen}]",
    "no necesito la luz {room:loc} [apágala]",
  ),
  "lights_dim": (
    "$pre (baja|atenúa) (la luz|las luces) [{room:gen}] [al {percent}]",
    "(pon|deja) (la luz|las luces) [{room:gen}] al {percent}",
    "$puedes bajar la intensidad de la luz [{room:loc}]",
    "(pon|deja) la luz más (tenue|suave|baja) [{room:loc}]",
    "(la luz está muy fuerte|las luces están muy fuertes) [{room:loc}]",
    "brillo (al|a un) {percent} [{room:loc}]",
    "baja el brillo [de las luces] [{room:gen}]",
    "(regula|ajusta) (la luz|las luces) {room:gen} al {percent}",
  ),
  "set_temperature": (
    "$pre pon (la calefacción|el aire|el termostato|la temperatura) a {temperature} [{room:loc}]",
    "(sube|baja) (la calefacción|la temperatura|el termostato) a {temperature}",
    "$puedes poner la temperatura a {temperature}",
    "(quiero|pon) {room:def} a {temperature}",
    "(cambia|ajusta) la temperatura [{room:gen}] a {temperature}",
    "termostato a {temperature} $pf",
    "(calienta|enfría) {room:def} a {temperature}",
    "(mantén|deja) la temperatura en {temperature}",
  ),
  "device_on": (
    "$pre (enciende|prende) {device:def} [{room:gen}]",
    "(pon|conecta) {device:def} [{room:gen}] $pf",
    "$puedes (encender|prender) {device:def}",
    "(activa|arranca) {device:def}",
    "(quiero|necesito) que enciendas {device:def}",
    "(enciéndeme|préndeme) {device:def} $pf",
    "(enciende|prende) {device:def} {room:loc}",
  ),
  "device_off": (
    "$pre apaga {device:def} [{room:gen}]",
    "(desconecta|para) {device:def} [{room:gen}] $pf",
    "$puedes apagar {device:def}",
    "(desactiva|detén) {device:def}",
    "(quiero|necesito) que apagues {device:def}",
    "apágame {device:def} $pf",
    "apaga {device:def} {room:loc}",
    "ya no necesito {device:def}",
  ),
  "navigate_to": (
    "$pre (llévame|vamos) {place:a}",
    "(cómo llego|cómo voy) {place:a} [desde aquí]",
    "(dame|muéstrame) (la ruta|cómo llegar|indicaciones para ir) {place:a}",
    "$puedes buscar el camino más (rápido|corto) para ir {place:a}",
    "(navega|conduce|vamos) a {city}",
    "(inicia|empieza) la navegación (a|hasta) {city}",
    "(ruta|llévame) a {city} [sin peajes|evitando autopistas]",
    "(quiero|necesito) ir {place:a} [ahora mismo|ya]",
  ),
  "add_to_list": (
    "$pre (añade|agrega|apunta) {item} a la lista de la compra",
    "(pon|apunta) {item} en la lista [de la compra|del súper|de compras]",
    "$puedes añadir {item} a mi lista",
    "nos hemos quedado sin {item} [apúntalo en la lista]",
    "en la lista de la compra (pon|apunta) {item}",
    "hay que comprar {item} [apúntalo]",
    "(añádeme|apúntame) {item} a la lista $pf",
    "(tengo que|necesito) comprar {item} (apúntalo en la lista|añádelo a la lista)",
  ),
  "open_app": (
    "$pre abre {app:def}",
    "(inicia|lanza|arranca) {app:def}",
    "$puedes abrir {app:def} $pf",
    "(ve a|cambia a) {app:def}",
    "(quiero|necesito) (mirar|usar|entrar en) {app:def}",
    "(muéstrame|ábreme) {app:def}",
    "abre la aplicación {app:gen}",
    "llévame a {app:def}",
  ),
  "translate": (
    "$pre cómo se dice {phrase} en {language}",
    "traduce {phrase} al {language}",
    "qué es {phrase} en {language}",
    "$puedes traducir {phrase} al {language}",
    "cómo digo {phrase} en {language}",
    "(dime|dame) la traducción de {phrase} al {language}",
    "cómo se traduce {phrase} al {language}",
    "(necesito|quiero) saber cómo se dice {phrase} en {language}",
  ),
}
# fmt: on

# Spanish matrix with English insertions, the way US and Latin American
# bilingual speakers mix: English nouns with Spanish articles and verbs.
# fmt: off
CODE_SWITCH: dict[str, dict[str, tuple[str, ...]]] = {
  "en": {
    "play_music": (
      "pon la <playlist> de {artist} [{room:loc}]",
      "ponme el último <single> de {artist@en}",
      "pon mi <playlist> de (<workout>|<chill>|<running>) [{room:loc}]",
    ),
    "pause_music": (
      "dale <pause> [a la música]",
      "pon <pause> $pf",
      "ponle <stop> a la música [{room:loc}]",
    ),
    "next_track": (
      "dale <skip> a esta canción",
      "<next> por favor",
      "pasa a la siguiente <song>",
      "<skip> esta canción",
    ),
    "volume_up": (
      "sube el <volume> [un poco]",
      "súbele al <volume> [un poquito]",
      "pon el <volume> más alto",
    ),
    "volume_down": (
      "baja el <volume> [un poco]",
      "bájale al <volume> [un poquito]",
      "el <volume> está muy alto",
    ),
    "volume_set": (
      "pon el <volume> (a|en) {number}",
      "pon el volumen en {number@en}",
      "<volume> al {percent}",
    ),
    "set_alarm": (
      "ponme la <alarm> a las {time@en:clock} [{date}]",
      "pon una <alarm> para {time} [{date}]",
      "despiértame {date} a las {time@en:hour}",
    ),
    "cancel_alarm": (
      "cancela la <alarm> [de {time}]",
      "quita la <alarm> para {date}",
      "borra todas las <alarms>",
    ),
    "set_timer": (
      "pon un <timer> de {duration}",
      "pon un temporizador de {duration@en}",
      "<timer> de {duration} $pf",
    ),
    "set_reminder": (
      "ponme un <reminder> para {task} [{date}]",
      "hazme un <reminder> a {time} para {task}",
      "crea un <reminder> para {date} para {task}",
    ),
    "call_contact": (
      "hazle <facetime> a {contact}",
      "llama a {contact} en <speaker>",
      "dale un <call> a {contact}",
    ),
    "send_message": (
      "mándale un <text> a {contact} que diga {message}",
      "dile a {contact} que {message@en}",
      "escríbele a {contact} por <whatsapp> que {message}",
    ),
    "get_weather": (
      "cuál es el <forecast> para {date}",
      "qué tiempo hace en {city@en}",
      "cómo está el <weather> [en {city}] [{date}]",
    ),
    "get_time": (
      "qué hora es en {city@en}",
      "dime la hora en {city@en}",
      "qué hora es <right now> en {city}",
    ),
    "lights_on": (
      "prende (la <light>|las <lights>) [{room:gen}]",
      "(enciende|prende) la luz del <living>",
      "<lights on> {room:loc}",
    ),
    "lights_off": (
      "apaga (la <light>|las <lights>) [{room:gen}]",
      "apaga la luz del <living>",
      "<lights off> por favor",
    ),
    "lights_dim": (
      "baja las <lights> [{room:gen}]",
      "ponle <dim> a las luces [{room:gen}]",
      "baja el <brightness> al {percent}",
    ),
    "set_temperature": (
      "pon el <thermostat> a {temperature}",
      "pon el termostato en {temperature@en}",
      "sube el <heat> a {temperature}",
    ),
    "device_on": (
      "prende el {device@en} [{room:gen}]",
      "enciende el {device@en} $pf",
      "pon el {device@en} {room:loc}",
    ),
    "device_off": (
      "apaga el {device@en} [{room:gen}]",
      "desconecta el {device@en}",
      "apágame el {device@en} $pf",
    ),
    "navigate_to": (
      "llévame a {city@en}",
      "abre <google maps> y llévame {place:a}",
      "pon el <gps> para ir {place:a}",
    ),
    "add_to_list": (
      "añade {item@en} a la lista [de la compra]",
      "pon {item} en la <shopping list>",
      "apunta {item@en} en la lista",
    ),
    "open_app": (
      "ábreme la <app> de {app@en}",
      "abre {app@en} $pf",
    ),
    "translate": (
      "cómo se dice {phrase@en} en {language}",
      "qué significa {phrase@en}",
      "traduce {phrase} a <english>",
    ),
  },
}
# fmt: on

SWITCHABLE: dict[str, tuple[str, ...]] = {"en": ("song", "artist", "app")}

# ----------------------------------------------------------------------------
# Entities.

# fmt: off
_FIRST_NAMES = (
  "maría", "josé", "juan", "carmen", "antonio", "ana", "manuel", "laura", "francisco",
  "lucía", "javier", "marta", "carlos", "elena", "miguel", "isabel", "david", "cristina",
  "pedro", "pilar", "alejandro", "paula", "rafael", "sara", "fernando", "raquel", "jorge",
  "rosa", "luis", "beatriz", "pablo", "silvia", "sergio", "patricia", "diego", "andrea",
  "alberto", "mónica", "álvaro", "nuria", "ramón", "teresa", "enrique", "sofía", "andrés",
  "valentina", "ricardo", "camila", "eduardo", "daniela", "guillermo", "gabriela", "roberto",
  "mariana", "ignacio", "claudia", "joaquín", "ximena", "santiago", "fernanda", "mateo",
  "natalia", "emilio", "alejandra", "gonzalo", "lorena", "rubén", "irene", "víctor", "julia",
  "hugo", "adriana", "martín", "verónica", "gustavo", "carolina", "óscar", "rocío", "héctor",
  "esperanza", "iván", "guadalupe", "raúl", "inés", "tomás", "marina", "felipe", "victoria",
  "arturo", "luisa", "jaime", "diana", "esteban", "alicia", "rodrigo", "consuelo", "nicolás",
  "celia", "ernesto", "noelia",
)
_SURNAMES = (
  "garcía", "rodríguez", "gonzález", "fernández", "lópez", "martínez", "sánchez", "pérez",
  "gómez", "martín", "jiménez", "ruiz", "hernández", "díaz", "moreno", "álvarez", "muñoz",
  "romero", "alonso", "gutiérrez", "navarro", "torres", "domínguez", "vázquez", "ramos", "gil",
  "ramírez", "serrano", "blanco", "molina", "morales", "suárez", "ortega", "delgado", "castro",
  "ortiz", "rubio", "marín", "sanz", "núñez", "iglesias", "medina", "garrido", "cortés",
  "castillo", "santos", "lozano", "guerrero", "cano", "prieto",
)
_RELATIVES = (
  "mamá", "papá", "mi madre", "mi padre", "mi abuela", "mi abuelo", "mi hermana", "mi hermano",
  "mi mujer", "mi marido", "mi esposa", "mi esposo", "mi hijo", "mi hija", "mi jefe", "mi jefa",
  "mi tía rosa", "mi tío pepe", "la abuela", "mi suegra",
)
# fmt: on

# fmt: off
ENTITIES: dict[str, tuple[str, ...]] = {
  "contact": _FIRST_NAMES
  + _RELATIVES
  + tuple(f"{f} {s}" for f, s in zip(_FIRST_NAMES[1::2], _SURNAMES, strict=True)),
  "song": (
    "despacito", "la bicicleta", "bailando", "vivir mi vida", "la camisa negra", "mi gente",
    "hawái", "tusa", "dákiti", "me porto bonito", "tití me preguntó", "la flaca",
    "corazón espinado", "oye cómo va", "la bamba", "guantanamera", "bésame mucho",
    "cielito lindo", "el rey", "volver volver", "amor eterno", "si nos dejan",
    "historia de un amor", "sabor a mí", "contigo aprendí", "la gota fría",
    "color esperanza", "labios compartidos", "en el muelle de san blas", "clavado en un bar",
    "mariposa traicionera", "eres", "de música ligera", "persiana americana",
    "lamento boliviano", "la chica de ayer", "entre dos tierras", "mediterráneo",
    "penélope", "lucha de gigantes", "cómo hablar", "a dios le pido", "me enamora",
    "la tortura", "la quiero a morir", "corazón partío", "contamíname", "ojalá", "yolanda",
    "gracias a la vida", "te recuerdo amanda", "macarena", "aserejé",
    "la vida es un carnaval", "quimbara", "devórame otra vez", "propuesta indecente",
    "obsesión", "gasolina", "danza kuduro", "provenza", "bichota", "ella baila sola",
    "chantaje", "ciega sordomuda", "antología", "pies descalzos", "suerte", "me gustas tú",
    "clandestino", "bonito", "corazón de melón", "el triste", "gavilán o paloma",
    "la nave del olvido", "hoy tengo ganas de ti", "amor prohibido", "como la flor",
    "bidi bidi bom bom", "no me queda más", "la incondicional", "cómo duele",
    "tu falta de querer", "felices los cuatro", "hasta el amanecer", "el perdón",
    "échame la culpa", "súbeme la radio", "despechá", "quédate", "ojitos lindos",
    "la noche de anoche", "vivir así es morir de amor", "la media vuelta",
    "el último beso", "ave maría", "malamente", "pienso en tu mirá", "con altura",
    "la bachata", "provócame", "tacones rojos", "mi bebito fiu fiu", "monotonía",
    "la jumpa", "ay vamos", "rayando el sol", "hijo de la luna", "cruz de navajas",
    "maldito duende", "la flor de la canela", "mi buenos aires querido", "por una cabeza",
    "el reloj", "sin ti", "la puerta negra", "un siglo sin ti", "ahora quién",
  ),
  "artist": (
    "shakira", "juanes", "luis fonsi", "daddy yankee", "bad bunny", "j balvin", "maluma",
    "rosalía", "enrique iglesias", "julio iglesias", "alejandro sanz", "ricky martin",
    "marc anthony", "juan luis guerra", "carlos vives", "karol g", "ozuna", "camilo",
    "sebastián yatra", "manu chao", "maná", "soda stereo", "gustavo cerati", "café tacvba",
    "los prisioneros", "héroes del silencio", "mecano", "la oreja de van gogh",
    "el canto del loco", "estopa", "joaquín sabina", "joan manuel serrat",
    "camarón de la isla", "paco de lucía", "rocío jurado", "isabel pantoja", "raphael",
    "camilo sesto", "nino bravo", "josé josé", "juan gabriel", "vicente fernández",
    "alejandro fernández", "luis miguel", "thalía", "paulina rubio", "gloria trevi",
    "selena", "celia cruz", "tito puente", "héctor lavoe", "rubén blades", "willie colón",
    "romeo santos", "aventura", "prince royce", "nicky jam", "wisin y yandel", "don omar",
    "rauw alejandro", "myke towers", "peso pluma", "grupo frontera", "natalia lafourcade",
    "julieta venegas", "jesse y joy", "reik", "morat", "aitana", "pablo alborán",
    "david bisbal", "melendi", "dani martín", "vanesa martín", "malú", "lola flores",
    "mercedes sosa", "violeta parra", "víctor jara", "los tigres del norte", "calle trece",
    "residente", "quevedo", "c tangana", "natti natasha", "fito páez", "charly garcía",
    "andrés calamaro", "los fabulosos cadillacs", "vetusta morla", "amaral", "fangoria",
    "rocío dúrcal", "chayanne", "carlos santana",
  ),
  "city": (
    "madrid", "barcelona", "valencia", "sevilla", "zaragoza", "málaga", "murcia", "palma",
    "bilbao", "alicante", "córdoba", "valladolid", "vigo", "gijón", "granada",
    "la coruña", "oviedo", "santander", "pamplona", "san sebastián", "salamanca", "toledo",
    "cádiz", "almería", "burgos", "león", "tarragona", "girona", "badajoz", "cáceres",
    "logroño", "huelva", "jaén", "segovia", "ávila", "cuenca", "teruel", "lugo", "ourense",
    "albacete", "santiago de compostela", "las palmas", "santa cruz de tenerife", "ibiza",
    "marbella", "benidorm", "ciudad de méxico", "guadalajara", "monterrey", "puebla",
    "tijuana", "cancún", "mérida", "oaxaca", "querétaro", "acapulco", "veracruz", "bogotá",
    "medellín", "cali", "cartagena", "barranquilla", "buenos aires", "rosario", "mendoza",
    "santiago", "valparaíso", "lima", "cuzco", "arequipa", "quito", "guayaquil", "caracas",
    "maracaibo", "la paz", "montevideo", "asunción", "san josé", "panamá", "managua",
    "tegucigalpa", "san salvador", "la habana", "santo domingo", "san juan", "punta cana",
    "nueva york", "los ángeles", "miami", "chicago", "houston", "londres", "parís", "roma",
    "berlín", "lisboa", "ámsterdam", "bruselas", "viena", "moscú", "pekín", "tokio",
    "estambul", "nueva delhi", "sídney", "atenas", "praga", "varsovia", "estocolmo",
    "copenhague", "dublín", "edimburgo", "ginebra", "zúrich", "múnich", "milán", "nápoles",
    "florencia", "venecia", "marsella", "burdeos", "oporto", "san francisco", "las vegas",
    "washington", "toronto", "montreal",
  ),
  "place": tuple(_PLACES),
  "room": tuple(_ROOMS),
  "device": tuple(_DEVICES),
  "app": tuple(_APPS),
  "item": (
    "leche", "huevos", "pan", "mantequilla", "café", "manzanas", "plátanos",
    "papel higiénico", "lavavajillas", "zumo de naranja", "pechugas de pollo",
    "carne picada", "queso", "yogures", "cereales", "arroz", "pasta", "tomates", "cebollas",
    "ajos", "patatas", "aceite de oliva", "mermelada de fresa", "papel de cocina",
    "detergente", "pilas", "bombillas", "champú", "pasta de dientes", "comida para el perro",
    "arena para el gato", "helado", "pizza congelada", "salmón", "lechuga", "zanahorias",
    "aguacates", "limones", "harina", "azúcar", "sal", "pimienta", "té", "agua con gas",
    "cerveza", "vino tinto", "galletas", "avena", "miel", "kétchup", "mostaza", "mayonesa",
    "tortillas de maíz", "jamón serrano", "chorizo", "aceitunas", "frijoles negros",
    "lentejas", "garbanzos", "atún en lata", "espinacas", "brócoli", "champiñones",
    "pimientos", "pepinos", "uvas", "fresas", "bolsas de basura", "papel de aluminio",
    "pañales", "toallitas", "crema solar", "pan dulce", "tortillas",
  ),
  "task": (
    "llamar al dentista", "sacar la basura", "regar las plantas", "recoger a los niños",
    "tomarme la pastilla", "pagar la factura de la luz", "comprar leche", "pasear al perro",
    "llamar a mi madre", "enviar el informe", "reservar mesa para cenar",
    "renovar el pasaporte", "recoger la ropa de la tintorería", "dar de comer al gato",
    "mirar el horno", "mover el coche", "cargar el móvil",
    "devolver los libros a la biblioteca", "comprar un regalo de cumpleaños",
    "pedir cita en la peluquería", "beber agua", "cerrar la puerta con llave",
    "felicitar a mi hermana", "ir al banco", "hacer la compra",
  ),
  "message": (
    "llego tarde", "llego en diez minutos", "ya voy de camino", "la cena está lista",
    "la reunión es a las tres", "estoy en un atasco", "te llamo luego", "te echo de menos",
    "te quiero", "estoy en el súper", "ya salgo del trabajo", "se me olvidaron las llaves",
    "ya tengo las entradas", "los niños ya están dormidos", "hace falta leche",
    "te recojo después del colegio", "ya casi llego", "ha llegado el paquete",
    "llego a cenar", "el tren viene con retraso", "estoy fuera", "aquí está lloviendo",
  ),
  "phrase": (
    "buenos días", "muchas gracias", "dónde está el baño", "cuánto cuesta esto",
    "no entiendo", "mucho gusto", "buenas noches", "perdone", "lo siento",
    "la cuenta por favor", "hablas inglés", "te quiero", "feliz cumpleaños", "hasta mañana",
    "dónde está la estación de tren", "tengo hambre", "me puedes ayudar", "cómo te llamas",
    "qué tal", "que tengas un buen día", "salud", "soy alérgico a los cacahuetes",
  ),
  "language": (
    "inglés", "francés", "alemán", "italiano", "portugués", "chino", "japonés", "coreano",
    "ruso", "hindi", "árabe", "holandés", "turco", "griego", "polaco", "sueco", "catalán",
  ),
}
# fmt: on
