"""English (US) commands: templates, entities and spelled-out numbers and times.

See `grammar.py` for the template syntax and what a language module provides.
"""

from __future__ import annotations

import numpy as np

LANG = "en"

# ----------------------------------------------------------------------------
# Numbers, times, dates, durations.

_ONES = (
  "zero one two three four five six seven eight nine ten eleven twelve thirteen "
  "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINALS = (
  "_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
  "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = (
  "january february march april may june july august september october november december"
).split()


def number_words(n: int) -> str:
  """Spells 0 <= n < 1000 in words ("forty two")."""
  if not 0 <= n < 1000:
    raise ValueError(f"number out of range: {n}")
  if n < 20:
    return _ONES[n]
  if n < 100:
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
  hundreds, rest = divmod(n, 100)
  return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def ordinal_words(n: int) -> str:
  """Spells an ordinal 1 <= n <= 39 ("twenty first")."""
  if n <= 20:
    return _ORDINALS[n]
  tens, ones = divmod(n, 10)
  if ones == 0:
    return _TENS[tens][:-1] + "ieth"
  return _TENS[tens] + " " + _ORDINALS[ones]


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _clock(hour: int, minute: int) -> str:
  """Reads a 12-hour clock time the way it is said: "seven", "six oh five", "eight fifteen"."""
  if minute == 0:
    return number_words(hour)
  if minute < 10:
    return f"{number_words(hour)} oh {number_words(minute)}"
  return f"{number_words(hour)} {number_words(minute)}"


_MINUTES = (0, 0, 0, 0, 5, 10, 15, 15, 20, 25, 30, 30, 30, 40, 45, 45, 50, 55)


def _time(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A clock time; forms: "" (any), "clock" ("seven thirty"), "hour" ("seven")."""
  hour24 = int(
    _pick(rng, (5, 6, 6, 7, 7, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23))
  )
  hour = (hour24 - 1) % 12 + 1
  minute = int(_pick(rng, _MINUTES))
  if form == "hour":
    return "", number_words(hour), ""
  if form == "clock":
    return "", _clock(hour, minute), ""
  if form:
    raise ValueError(f"unknown en time form {form!r}")
  if rng.random() < 0.05:
    return "", _pick(rng, ("noon", "midnight")), ""
  if hour24 < 12:
    part = "in the morning"
  elif hour24 < 18:
    part = "in the afternoon"
  elif hour24 < 21:
    part = "in the evening"
  else:
    part = "at night"
  nxt = hour % 12 + 1
  if minute == 0:
    text = _pick(
      rng, (number_words(hour), f"{number_words(hour)} o'clock", f"{number_words(hour)} o'clock")
    )
  elif minute == 30 and rng.random() < 0.4:
    text = f"half past {number_words(hour)}"
  elif minute == 15 and rng.random() < 0.5:
    text = f"quarter past {number_words(hour)}"
  elif minute == 45 and rng.random() < 0.5:
    text = f"quarter to {number_words(nxt)}"
  elif minute in (5, 10, 20) and rng.random() < 0.4:
    text = f"{number_words(minute)} past {number_words(hour)}"
  elif minute in (40, 50, 55) and rng.random() < 0.4:
    text = f"{number_words(60 - minute)} to {number_words(nxt)}"
  else:
    text = _clock(hour, minute)
  if rng.random() < 0.4:
    text += " " + part
  return "", text, ""


def _date(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A day; form "" may put "on" before it, "bare" never does ("for next friday")."""
  if form not in ("", "bare"):
    raise ValueError(f"unknown en date form {form!r}")
  on = "" if form == "bare" else "on"
  r = rng.random()
  if r < 0.3:
    return (
      "",
      _pick(rng, ("today", "tomorrow", "tomorrow", "the day after tomorrow", "this weekend")),
      "",
    )
  day = _pick(rng, _WEEKDAYS)
  if r < 0.55:
    return on, day, ""
  if r < 0.75:
    return "", _pick(rng, ("next", "this", "this coming")) + " " + day, ""
  month, dom = _pick(rng, _MONTHS), int(rng.integers(1, 29))
  if rng.random() < 0.5:
    return on, f"{month} {ordinal_words(dom)}", ""
  return on, f"the {ordinal_words(dom)} of {month}", ""


def _duration(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A timer length; form "adj" gives the attributive form ("a {five minute} timer")."""
  if form not in ("", "adj"):
    raise ValueError(f"unknown en duration form {form!r}")
  adj = form == "adj"
  r = rng.random()
  if r < 0.55:
    n = int(_pick(rng, (1, 2, 3, 4, 5, 5, 6, 7, 8, 10, 10, 12, 15, 15, 20, 25, 30, 40, 45, 90)))
    unit = "minute" if adj or n == 1 else "minutes"
    text = f"{'a' if n == 1 and not adj and rng.random() < 0.5 else number_words(n)} {unit}"
  elif r < 0.7:
    n = int(_pick(rng, (10, 15, 20, 30, 30, 45, 50, 90)))
    text = f"{number_words(n)} {'second' if adj else 'seconds'}"
  elif r < 0.85:
    n = int(_pick(rng, (1, 1, 2, 3)))
    if adj:
      text = f"{number_words(n)} hour"
    elif n == 1:
      text = _pick(rng, ("an hour", "one hour"))
    else:
      text = f"{number_words(n)} hours"
  elif adj:
    text = _pick(rng, ("half hour", "ninety minute", "two and a half minute"))
  else:
    text = _pick(
      rng,
      (
        "half an hour",
        "an hour and a half",
        "a minute and a half",
        f"one hour and {number_words(int(_pick(rng, (10, 15, 20, 30, 45))))} minutes",
        f"{number_words(int(_pick(rng, (2, 3, 5))))} and a half minutes",
      ),
    )
  return "", text, ""


def _number(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A volume level: mostly 0-15, sometimes a multiple of ten up to 100."""
  del form
  n = int(rng.integers(0, 16)) if rng.random() < 0.75 else 10 * int(rng.integers(2, 11))
  return "", number_words(n), ""


def _percent(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(5 * int(rng.integers(1, 21)))} percent", ""


def _temperature(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """Thermostat settings, in Fahrenheit (US) or, less often, Celsius."""
  del form
  n = int(rng.integers(60, 81)) if rng.random() < 0.7 else int(rng.integers(16, 29))
  return "", f"{number_words(n)} degrees", ""


GENERATORS = {
  "time": _time,
  "date": _date,
  "duration": _duration,
  "number": _number,
  "percent": _percent,
  "temperature": _temperature,
}


def inflect(slot_type: str, value: str, form: str) -> tuple[str, str, str]:
  """English entities need no inflection."""
  if form:
    raise ValueError(f"unknown en {slot_type} form {form!r}")
  return "", value, ""


# ----------------------------------------------------------------------------
# Templates.

MACROS = {
  "pre": "[hey|okay|um|so|alright]",
  "can": "(can you|could you|would you|will you|can you please|could you please)",
}

# fmt: off
TEMPLATES: dict[str, tuple[str, ...]] = {
  "play_music": (
    "$pre [please] play {song} [by {artist}] [in the {room}]",
    "$pre $can play {song} [for me] [on {app}]",
    "(put on|play) (some music|some songs|a few songs) by {artist} [in the {room}|on {app}]",
    "i (want|wanna|would like) to (hear|listen to) {song} [by {artist}]",
    "play the (song|track) {song} [on {app}]",
    "(let's hear|let me hear|play me) something by {artist}",
    "(shuffle|play) (songs|music) by {artist} [in the {room}]",
    "i'm in the mood for {artist} [put something on]",
    "(start|queue up) {song} [please]",
  ),
  "pause_music": (
    "$pre pause [the music|the song|this song|it] [in the {room}]",
    "(stop|pause) the music [in the {room}] [please]",
    "$can (pause|stop) (the music|the song|this) [for a second|for a moment]",
    "(hold on|wait|one sec) pause [it|that|the music]",
    "(turn off|kill) the music [in the {room}]",
    "stop playing [music|this song] [in the {room}]",
    "(shh|quiet) pause the (music|song)",
  ),
  "next_track": (
    "$pre (skip|skip this song|skip this track|skip it)",
    "(next|next song|next track) [please]",
    "play the next (song|track|one)",
    "$can skip (to the next song|this one|ahead)",
    "i don't like this (song|one) (skip it|play something else|next)",
    "(go to|jump to|move on to) the next (song|track)",
    "play (something else|a different song) [please]",
  ),
  "volume_up": (
    "$pre turn (it|the volume|the music|the sound) up [a bit|a little|a notch]",
    "(louder|a bit louder|make it louder) [please]",
    "turn up the (music|volume|sound) [in the {room}]",
    "$can (raise|increase|bump up) the volume [a little|a bit]",
    "i can't hear (it|anything|the music) [turn it up]",
    "volume up [please]",
    "(pump|crank) (it|the volume|the music) up [in the {room}]",
    "make the music louder [in the {room}]",
  ),
  "volume_down": (
    "$pre turn (it|the volume|the music|the sound) down [a bit|a little|a notch]",
    "(quieter|a bit quieter|not so loud) [please]",
    "turn down the (music|volume|sound) [in the {room}]",
    "$can (lower|decrease|reduce) the volume [a little|a bit]",
    "it's (too loud|way too loud) [turn it down]",
    "volume down [please]",
    "make (it|the music) (quieter|softer) [in the {room}]",
    "keep it down [a bit] [please]",
  ),
  "volume_set": (
    "$pre set the volume to {number}",
    "(volume|put the volume) (to|at) {number} [please]",
    "$can (set|change|put) the volume (to|at) {percent}",
    "turn the volume (up|down) to {number}",
    "make the volume {number} [in the {room}]",
    "(change|adjust) the (music|speaker) volume to {percent}",
    "volume level {number}",
    "i want the volume at {number}",
  ),
  "set_alarm": (
    "$pre set an alarm (for|at) {time} [{date}]",
    "wake me up at {time} [{date}]",
    "wake me up {date} at {time}",
    "$can set (an|my) alarm for {time} [{date}]",
    "i need (an alarm|to wake up|to get up) at {time} [{date}]",
    "alarm (for|at) {time} [{date}] [please]",
    "(make|create) an alarm for {date:bare} at {time}",
    "set the alarm to go off at {time} [{date}]",
    "get me up at {time} [{date}]",
  ),
  "cancel_alarm": (
    "$pre (cancel|delete|remove) (my|the) alarm [for {time}] [{date}]",
    "turn off my {time:clock} alarm",
    "i don't need (an|the|my) alarm {date} [anymore]",
    "$can (cancel|delete|disable) (all my alarms|the alarm for {time})",
    "(get rid of|clear) (my|the) alarm (for {time}|{date})",
    "no alarm {date} [please]",
    "don't wake me up {date}",
    "(switch off|disable) (my|the) alarm [for {date:bare}]",
  ),
  "set_timer": (
    "$pre set a timer for {duration}",
    "(start|set) a {duration:adj} timer",
    "timer [for] {duration}",
    "$can (time|count down) {duration} [for me]",
    "(put|set) the timer (on|for) {duration}",
    "i need a timer for {duration} [for the pasta|for the eggs|for the oven]",
    "start a countdown (of|for) {duration}",
  ),
  "set_reminder": (
    "$pre remind me to {task} [{date}] [at {time}]",
    "remind me {date} to {task}",
    "$can remind me at {time} to {task}",
    "set a reminder to {task} [{date}]",
    "(create|add|make) a reminder for {time} [{date}] to {task}",
    "don't let me forget to {task} [{date}]",
    "i need a reminder to {task} [at {time}]",
    "(remind me|reminder) {date} at {time} (to|that i need to) {task}",
  ),
  "call_contact": (
    "$pre call {contact} [please] [on speaker]",
    "(phone|ring|dial) {contact}",
    "$can call {contact} [for me]",
    "(give|can you give) {contact} a call",
    "i (need|want) to (call|talk to|speak to) {contact}",
    "(make|start) a (call|phone call|video call) (to|with) {contact}",
    "get {contact} on the phone",
    "video call {contact}",
  ),
  "send_message": (
    "$pre (text|message) {contact} [that] {message}",
    "send (a message|a text) to {contact} (saying|that says) {message}",
    "tell {contact} [that] {message}",
    "$can (send|shoot) {contact} a (text|message) saying {message}",
    "(write|message) {contact} saying {message}",
    "let {contact} know [that] {message}",
    "send {contact} a (whatsapp|text message) saying {message}",
  ),
  "get_weather": (
    "$pre what's the weather [like] [in {city}] [{date}]",
    "(how's|what's) the weather (looking|going to be) [in {city}] {date}",
    "is it going to rain [in {city}] [{date}]",
    "$can (check|tell me) the (weather|forecast) (for|in) {city} [{date}]",
    "(do i need|should i take) an umbrella [{date}]",
    "what's the forecast (for {date:bare}|in {city})",
    "how (hot|cold|warm) (is it|will it be) (in {city}|outside) [{date}]",
    "will it (snow|be sunny) in {city} [{date}]",
  ),
  "get_time": (
    "$pre what time is it [in {city}] [right now]",
    "(what's|tell me) the time [in {city}]",
    "$can tell me (the time|what time it is) [in {city}]",
    "what's the (current|local) time in {city}",
    "do you know what time it is [in {city}]",
    "(time|the time) in {city}",
    "how late is it [in {city}]",
    "what time is it over in {city} [right now]",
  ),
  "lights_on": (
    "$pre turn on the lights [in the {room}]",
    "turn the (lights|light) on [in the {room}]",
    "(switch|flip) on the (lights|light) [in the {room}]",
    "$can (turn|switch) on the {room} (lights|light)",
    "lights on [in the {room}] [please]",
    "it's (too dark|dark) in (here|the {room}) [turn on the lights]",
    "light up the {room} [please]",
    "i need some light in the {room}",
  ),
  "lights_off": (
    "$pre turn off the lights [in the {room}]",
    "turn the (lights|light) off [in the {room}]",
    "(switch|shut) off the (lights|light) [in the {room}]",
    "$can (turn|switch) off the {room} (lights|light)",
    "lights off [in the {room}] [please]",
    "(kill|cut) the lights [in the {room}]",
    "(i'm going to bed|good night) turn off [all] the lights",
    "make it dark in the {room}",
  ),
  "lights_dim": (
    "$pre dim the lights [in the {room}] [to {percent}]",
    "turn the lights down [in the {room}] [to {percent}]",
    "$can (lower|reduce) the (brightness|light) [in the {room}] [to {percent}]",
    "set the {room} lights to {percent}",
    "(make|set) the lights (dimmer|softer|a bit darker) [in the {room}]",
    "(lights|brightness) (to|at) {percent} [in the {room}]",
    "the lights are too bright [in the {room}] [dim them]",
    "dim the {room} lights [a bit|a little|down to {percent}]",
  ),
  "set_temperature": (
    "$pre set the (temperature|thermostat|heat) to {temperature} [in the {room}]",
    "(make|keep) it {temperature} in (here|the {room})",
    "$can (turn|put) the (heat|thermostat|air) (up|down) to {temperature}",
    "i want (it|the {room}) at {temperature}",
    "(change|adjust) the temperature [in the {room}] to {temperature}",
    "thermostat (to|at) {temperature} [please]",
    "(heat|cool) the {room} to {temperature}",
    "(warm it up|cool it down) to {temperature} [in the {room}]",
  ),
  "device_on": (
    "$pre turn on the {device} [in the {room}]",
    "turn the {device} on [in the {room}]",
    "(switch|power) on the {device} [in the {room}]",
    "$can (turn|switch) on the {device} [for me]",
    "start the {device} [please]",
    "(can you|could you) get the {device} (going|running)",
    "i want the {device} on [in the {room}]",
    "{device} on [please]",
  ),
  "device_off": (
    "$pre turn off the {device} [in the {room}]",
    "turn the {device} off [in the {room}]",
    "(switch|power|shut) off the {device} [in the {room}]",
    "$can (turn|switch) off the {device} [for me]",
    "stop the {device} [please]",
    "shut down the {device} [in the {room}]",
    "i don't need the {device} (anymore|right now) [turn it off]",
    "{device} off [please]",
  ),
  "navigate_to": (
    "$pre (navigate|take me|get me) to {place}",
    "(give me|show me|get) directions to {place}",
    "how do i get to {place} [from here]",
    "$can (find|show me) the (fastest|quickest|best) way to {place}",
    "(navigate|drive|let's drive) to {city}",
    "(start|begin) (navigation|the route) to {place}",
    "route to {city} [avoiding tolls|avoiding highways]",
    "i (need|want) to (go|get) to {place} [right now]",
  ),
  "add_to_list": (
    "$pre add {item} to (my|the) (shopping|grocery) list",
    "put {item} on (my|the) (shopping|grocery) list",
    "$can add {item} to my list",
    "we're out of {item} [add it to the list|put it on the list]",
    "(shopping list|grocery list) add {item}",
    "can you put {item} on the list [for me]",
    "make a note to buy {item}",
    "i need to buy {item} (add it|put it) on the list",
  ),
  "open_app": (
    "$pre open {app}",
    "(launch|start|fire up) {app}",
    "$can open {app} [for me]",
    "switch to {app}",
    "i (want|need) to (check|use) {app}",
    "(bring up|pull up|show me) {app}",
    "open the {app} app [please]",
    "take me to {app}",
  ),
  "translate": (
    "$pre how do you say {phrase} in {language}",
    "translate {phrase} (to|into) {language}",
    "what's {phrase} in {language}",
    "$can translate {phrase} (to|into) {language} [for me]",
    "what is the {language} (word|phrase) for {phrase}",
    "how would i say {phrase} in {language}",
    "say {phrase} in {language}",
    "(i need|give me) the {language} translation (of|for) {phrase}",
  ),
}
# fmt: on

# English matrix with Spanish insertions, as bilingual speakers in the US use them.
# fmt: off
CODE_SWITCH: dict[str, dict[str, tuple[str, ...]]] = {
  "es": {
    "play_music": (
      "play <un poquito de> {artist@es}",
      "<oye> play {song} [by {artist}]",
    ),
    "pause_music": (
      "pause <la música> [please]",
      "<oye> (pause|stop) the music",
      "stop <la música> in the {room}",
    ),
    "next_track": (
      "skip <esta canción>",
      "(next song|play the next one) <por favor>",
      "<ay no> skip this one",
    ),
    "volume_up": (
      "turn it up <un poquito>",
      "<súbele> a little",
      "turn up the (volume|music) <por favor>",
    ),
    "volume_down": (
      "turn it down <un poquito>",
      "<bájale> a little",
      "<oye> turn the music down",
    ),
    "volume_set": (
      "set the volume to {number@es}",
      "volume at {number@es} <por favor>",
      "put the volume at {percent@es}",
    ),
    "set_alarm": (
      "set an alarm for {time@es} [{date}]",
      "wake me up {date@es} at {time}",
      "alarm for {time@es} <por favor>",
    ),
    "cancel_alarm": (
      "cancel the alarm for {date@es}",
      "(delete|cancel) my alarm <por favor>",
      "no alarm {date@es}",
    ),
    "set_timer": (
      "set a timer for {duration@es}",
      "timer {duration@es} <por favor>",
      "start a timer for {duration} <para el arroz>",
    ),
    "set_reminder": (
      "remind me to {task@es} [{date}]",
      "remind me {date@es} to {task}",
      "set a reminder <para> {task@es}",
    ),
    "call_contact": (
      "call {contact} <por favor>",
      "<oye> call {contact}",
    ),
    "send_message": (
      "tell {contact} that {message@es}",
      "text {contact} <que> {message@es}",
      "send a message to {contact} <por favor> saying {message}",
    ),
    "get_weather": (
      "what's the weather in {city@es} [{date}]",
      "what's the weather like {date@es}",
      "is it going to rain in {city@es}",
    ),
    "get_time": (
      "what time is it in {city@es}",
      "<oye> what time is it",
      "tell me the time in {city@es} <por favor>",
    ),
    "lights_on": (
      "turn on the lights in {room@es:def}",
      "lights on <por favor>",
      "<oye> turn on the lights [in the {room}]",
    ),
    "lights_off": (
      "turn off the lights in {room@es:def}",
      "lights off <por favor>",
      "<apaga la luz> please",
    ),
    "lights_dim": (
      "dim the lights <un poquito>",
      "turn the lights down in {room@es:def}",
      "dim the lights to {percent@es}",
    ),
    "set_temperature": (
      "set the thermostat to {temperature@es}",
      "make it {temperature@es} in here",
      "<oye> set the heat to {temperature}",
    ),
    "device_on": (
      "turn on {device@es:def} [please]",
      "turn on the {device} <por favor>",
      "switch on {device@es:def} in the {room}",
    ),
    "device_off": (
      "turn off {device@es:def} [please]",
      "turn off the {device} <por favor>",
      "<oye> switch off the {device}",
    ),
    "navigate_to": (
      "navigate to {city@es}",
      "take me to {place@es:def} [please]",
      "directions to {place} <por favor>",
    ),
    "add_to_list": (
      "add {item@es} to the (shopping|grocery) list",
      "put {item@es} on my list",
      "we're out of {item@es}",
    ),
    "open_app": (
      "open {app} <por favor>",
      "<oye> open {app}",
      "open {app@es:def} [please]",
    ),
    "translate": (
      "how do you say {phrase@es} in {language}",
      "what does {phrase@es} mean [in english]",
      "translate {phrase@es} to english",
    ),
  },
}
# fmt: on

SWITCHABLE: dict[str, tuple[str, ...]] = {"es": ("song", "artist", "contact")}

# ----------------------------------------------------------------------------
# Entities.

# fmt: off
_FIRST_NAMES = (
  "james", "john", "robert", "michael", "william", "david", "richard", "joseph", "thomas",
  "charles", "christopher", "daniel", "matthew", "anthony", "mark", "donald", "steven", "paul",
  "andrew", "joshua", "kevin", "brian", "george", "timothy", "ronald", "jason", "edward",
  "jeffrey", "ryan", "jacob", "gary", "nicholas", "eric", "jonathan", "stephen", "larry",
  "justin", "scott", "brandon", "benjamin", "samuel", "gregory", "alexander", "patrick", "frank",
  "raymond", "jack", "dennis", "jerry", "tyler", "mary", "patricia", "jennifer", "linda",
  "elizabeth", "barbara", "susan", "jessica", "sarah", "karen", "lisa", "nancy", "betty",
  "sandra", "margaret", "ashley", "kimberly", "emily", "donna", "michelle", "carol", "amanda",
  "melissa", "deborah", "stephanie", "rebecca", "sharon", "laura", "cynthia", "amy",
  "kathleen", "angela", "shirley", "brenda", "emma", "olivia", "ava", "isabella", "sophia",
  "charlotte", "mia", "amelia", "harper", "evelyn", "abigail", "ella", "chloe", "grace", "zoe",
  "hannah", "lily", "nora", "madison", "victoria",
)
_SURNAMES = (
  "smith", "johnson", "williams", "brown", "jones", "miller", "davis", "wilson", "anderson",
  "taylor", "moore", "martin", "jackson", "thompson", "white", "harris", "clark", "lewis",
  "robinson", "walker", "young", "allen", "king", "wright", "hill", "green", "adams", "baker",
  "nelson", "carter", "mitchell", "roberts", "turner", "phillips", "campbell", "parker", "evans",
  "edwards", "collins", "stewart", "morris", "murphy", "cook", "rogers", "morgan", "cooper",
  "peterson", "reed", "bailey", "bell",
)
_RELATIVES = (
  "mom", "dad", "grandma", "grandpa", "my wife", "my husband", "my sister", "my brother",
  "my son", "my daughter", "my boss", "uncle joe", "aunt mary", "my mother", "my father",
)
# fmt: on

# fmt: off
ENTITIES: dict[str, tuple[str, ...]] = {
  "contact": _FIRST_NAMES
  + _RELATIVES
  + tuple(f"{f} {s}" for f, s in zip(_FIRST_NAMES[1::2], _SURNAMES, strict=False)),
  "song": (
    "shape of you", "bohemian rhapsody", "hotel california", "billie jean", "thriller",
    "bad guy", "blinding lights", "rolling in the deep", "someone like you", "hello",
    "yesterday", "hey jude", "let it be", "imagine", "wonderwall", "smells like teen spirit",
    "stairway to heaven", "purple rain", "like a prayer", "material girl", "dancing queen",
    "take on me", "africa", "don't stop believing", "living on a prayer", "sweet caroline",
    "uptown funk", "happy", "get lucky", "old town road", "bad romance", "poker face",
    "shake it off", "blank space", "anti-hero", "love story", "perfect", "thinking out loud",
    "photograph", "castle on the hill", "all of me", "stay with me", "halo", "single ladies",
    "crazy in love", "umbrella", "diamonds", "toxic", "wrecking ball", "firework", "roar",
    "levitating", "don't start now", "watermelon sugar", "as it was", "drivers license",
    "bad habits", "peaches", "sunflower", "circles", "god's plan", "hotline bling",
    "one dance", "starboy", "save your tears", "cruel summer", "flowers", "espresso",
    "vampire", "easy on me", "chandelier", "cheap thrills", "counting stars", "radioactive",
    "believer", "thunder", "demons", "viva la vida", "yellow", "the scientist", "fix you",
    "clocks", "paradise", "somebody that i used to know", "pumped up kicks",
    "seven nation army", "mr brightside", "creep", "karma police", "losing my religion",
    "everybody hurts", "with or without you", "beautiful day", "born to run",
    "dancing in the dark", "jolene", "nine to five", "take me home country roads",
    "ring of fire", "hallelujah", "respect", "i will always love you", "my heart will go on",
    "wannabe", "torn", "no scrubs", "waterfalls", "lose yourself", "hey ya", "let her go",
    "riptide", "shallow", "rain on me", "lovely", "ocean eyes", "heat waves",
    "we are the champions", "another one bites the dust", "under pressure", "space oddity",
    "heroes", "superstition", "isn't she lovely", "what a wonderful world",
    "fly me to the moon", "my way", "here comes the sun", "come together", "piano man",
    "dancing on my own", "titanium", "wake me up", "lean on", "closer",
    "something just like this", "happier", "memories", "sugar", "girls like you",
    "moves like jagger", "payphone", "locked out of heaven", "grenade",
    "just the way you are", "talking to the moon", "die with a smile", "stressed out",
  ),
  "artist": (
    "taylor swift", "ed sheeran", "adele", "beyonce", "rihanna", "drake", "the weeknd",
    "billie eilish", "ariana grande", "justin bieber", "bruno mars", "lady gaga", "katy perry",
    "dua lipa", "harry styles", "olivia rodrigo", "post malone", "eminem", "kendrick lamar",
    "coldplay", "imagine dragons", "the beatles", "queen", "the rolling stones",
    "led zeppelin", "pink floyd", "nirvana", "radiohead", "michael jackson", "madonna",
    "prince", "elton john", "david bowie", "stevie wonder", "whitney houston", "mariah carey",
    "celine dion", "britney spears", "christina aguilera", "alicia keys", "john legend",
    "sam smith", "lizzo", "sia", "miley cyrus", "selena gomez", "shawn mendes",
    "charlie puth", "lewis capaldi", "arctic monkeys", "the killers", "foo fighters",
    "green day", "linkin park", "red hot chili peppers", "metallica", "bon jovi",
    "bruce springsteen", "bob dylan", "johnny cash", "dolly parton", "frank sinatra",
    "elvis presley", "aretha franklin", "fleetwood mac", "abba", "the police", "oasis",
    "gorillaz", "daft punk", "calvin harris", "avicii", "david guetta", "the chainsmokers",
    "sabrina carpenter", "doja cat", "lana del rey", "hozier", "norah jones", "john mayer",
    "pharrell williams", "outkast", "nicki minaj", "travis scott", "chappell roan",
    "noah kahan", "morgan wallen", "luke combs", "zach bryan", "the lumineers",
    "mumford and sons", "florence and the machine",
  ),
  "city": (
    "new york", "los angeles", "chicago", "houston", "phoenix", "philadelphia",
    "san antonio", "san diego", "dallas", "austin", "san francisco", "seattle", "denver",
    "boston", "miami", "atlanta", "nashville", "portland", "las vegas", "detroit",
    "minneapolis", "new orleans", "baltimore", "pittsburgh", "cleveland", "cincinnati",
    "kansas city", "saint louis", "salt lake city", "orlando", "tampa", "charlotte",
    "raleigh", "sacramento", "honolulu", "anchorage", "albuquerque", "tucson", "omaha",
    "milwaukee", "indianapolis", "columbus", "memphis", "louisville", "oklahoma city",
    "richmond", "buffalo", "toronto", "vancouver", "montreal", "ottawa", "calgary", "london",
    "manchester", "liverpool", "birmingham", "edinburgh", "glasgow", "dublin", "belfast",
    "cardiff", "bristol", "leeds", "oxford", "cambridge", "paris", "berlin", "madrid",
    "barcelona", "rome", "milan", "amsterdam", "brussels", "vienna", "zurich", "geneva",
    "prague", "warsaw", "budapest", "lisbon", "athens", "istanbul", "stockholm", "oslo",
    "copenhagen", "helsinki", "moscow", "tokyo", "osaka", "kyoto", "seoul", "beijing",
    "shanghai", "hong kong", "singapore", "bangkok", "manila", "jakarta", "sydney",
    "melbourne", "brisbane", "perth", "auckland", "wellington", "mumbai", "delhi",
    "bangalore", "dubai", "cairo", "cape town", "johannesburg", "nairobi", "lagos",
    "mexico city", "rio de janeiro", "buenos aires", "lima", "santiago", "havana",
  ),
  "place": (
    "the airport", "the train station", "the bus station", "the nearest gas station",
    "the nearest pharmacy", "the hospital", "the supermarket", "the grocery store",
    "the mall", "the post office", "the library", "the bank", "the gym", "the park",
    "the beach", "the museum", "downtown", "work", "the office", "the nearest coffee shop",
    "the zoo", "the stadium", "the university", "the hotel", "the dentist", "school",
    "the nearest hardware store", "the closest charging station", "the farmers market",
    "the city hall", "the movie theater", "the nearest parking garage", "the pediatrician",
    "the vet", "the car wash", "the ferry terminal",
  ),
  "room": (
    "kitchen", "living room", "bedroom", "bathroom", "dining room", "office", "hallway",
    "basement", "garage", "kids room", "guest room", "laundry room", "nursery", "attic",
    "master bedroom", "den", "study", "family room", "porch", "backyard",
  ),
  "device": (
    "tv", "fan", "heater", "air conditioner", "coffee maker", "washing machine",
    "dishwasher", "dryer", "kettle", "humidifier", "dehumidifier", "vacuum", "robot vacuum",
    "air purifier", "radio", "speaker", "space heater", "ceiling fan", "oven", "printer",
    "sprinklers", "water heater", "electric blanket",
  ),
  "app": (
    "spotify", "youtube", "netflix", "whatsapp", "instagram", "facebook", "tiktok", "gmail",
    "google maps", "uber", "lyft", "amazon", "zoom", "slack", "snapchat", "linkedin",
    "pinterest", "reddit", "waze", "duolingo", "venmo", "paypal", "airbnb", "doordash",
    "apple music", "google photos", "outlook", "discord", "twitch", "shazam",
  ),
  "item": (
    "milk", "eggs", "bread", "butter", "coffee", "apples", "bananas", "toilet paper",
    "dish soap", "orange juice", "chicken breasts", "ground beef", "cheddar cheese", "yogurt",
    "cereal", "rice", "pasta", "tomatoes", "onions", "garlic", "potatoes", "olive oil",
    "peanut butter", "strawberry jam", "paper towels", "laundry detergent", "batteries",
    "light bulbs", "shampoo", "toothpaste", "dog food", "cat litter", "ice cream",
    "frozen pizza", "salmon", "lettuce", "carrots", "avocados", "lemons", "flour", "sugar",
    "salt", "black pepper", "tea", "sparkling water", "beer", "red wine", "chips", "cookies",
    "crackers", "oatmeal", "honey", "ketchup", "mustard", "mayonnaise", "bagels",
    "cream cheese", "sour cream", "spinach", "broccoli", "mushrooms", "bell peppers",
    "cucumbers", "grapes", "blueberries", "trash bags", "aluminum foil", "diapers",
    "baby wipes", "sunscreen",
  ),
  "task": (
    "call the dentist", "take out the trash", "water the plants", "pick up the kids",
    "take my medicine", "pay the electric bill", "buy milk", "walk the dog",
    "call my mom", "send the report", "book a table for dinner", "renew my passport",
    "pick up the dry cleaning", "feed the cat", "check the oven", "move the car",
    "charge my phone", "return the library books", "buy a birthday present",
    "schedule a haircut", "stretch", "drink some water", "lock the front door",
    "cancel the gym membership", "email my boss",
  ),
  "message": (
    "i'm running late", "i'll be there in ten minutes", "i'm on my way", "dinner is ready",
    "the meeting moved to three", "i'm stuck in traffic", "i'll call you later",
    "i miss you", "i love you", "i'm at the store", "i'm leaving work now",
    "i forgot my keys", "i got the tickets", "the kids are asleep", "we need more milk",
    "i'll pick you up after school", "i'm almost home", "the package arrived",
    "i'll be home for dinner", "the train is delayed", "i'm outside", "it's raining here",
  ),
  "phrase": (
    "good morning", "thank you very much", "where is the bathroom",
    "how much does this cost", "i don't understand", "nice to meet you", "good night",
    "excuse me", "i'm sorry", "the check please", "do you speak english", "i love you",
    "happy birthday", "see you tomorrow", "where is the train station", "i'm hungry",
    "can you help me", "what's your name", "how are you", "have a nice day", "cheers",
    "i'm allergic to peanuts",
  ),
  "language": (
    "spanish", "french", "german", "italian", "portuguese", "chinese", "mandarin",
    "japanese", "korean", "russian", "hindi", "arabic", "dutch", "turkish", "greek",
    "polish", "swedish",
  ),
}
# fmt: on
