"""Mandarin Chinese commands (simplified Han): templates, entities, spelled numbers and times.

See `grammar.py` for the template syntax and what a language module provides.
Text is written with spaces between words so that every whitespace word has a
language ("帮 我 把 客厅 的 灯 打开"). Segmentation follows common usage:
"一个", "一首", "一下", "一点" are one word; a numeral and "点", "分钟",
"度" are separate words ("七 点 半", "两个 小时", "二十五 度").
"""

from __future__ import annotations

import numpy as np

LANG = "cmn"

# ----------------------------------------------------------------------------
# Numbers, times, dates, durations.

_DIGITS = "零 一 二 三 四 五 六 七 八 九".split()
_WEEKDAYS = ("一", "二", "三", "四", "五", "六", "日")


def number_words(n: int, liang: bool = False) -> str:
  """Spells 0 <= n <= 100 as one word ("二十五"); `liang` says "两" for 2 before a measure word."""
  if not 0 <= n <= 100:
    raise ValueError(f"number out of range: {n}")
  if n == 2 and liang:
    return "两"
  if n < 10:
    return _DIGITS[n]
  if n == 100:
    return "一百"
  tens, ones = divmod(n, 10)
  return ("" if tens == 1 else _DIGITS[tens]) + "十" + ("" if ones == 0 else _DIGITS[ones])


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


_MINUTES = (0, 0, 0, 0, 5, 10, 15, 15, 20, 25, 30, 30, 30, 40, 45, 45, 50, 55)


def _time(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A clock time: "早上 七 点 半", "下午 两 点 十五 分", "晚上 八 点"."""
  if form:
    raise ValueError(f"unknown cmn time form {form!r}")
  hour24 = int(
    _pick(rng, (5, 6, 6, 7, 7, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23))
  )
  minute = int(_pick(rng, _MINUTES))
  hour = hour24 if hour24 <= 12 else hour24 - 12
  h = number_words(hour, liang=True)
  if minute == 0:
    text = f"{h} 点" + _pick(rng, ("", "", " 整"))
  elif minute == 30:
    text = _pick(rng, (f"{h} 点 半", f"{h} 点 半", f"{h} 点 三十 分"))
  elif minute == 15:
    text = _pick(rng, (f"{h} 点 一 刻", f"{h} 点 十五 分", f"{h} 点 十五"))
  elif minute == 45:
    text = _pick(rng, (f"{h} 点 四十五 分", f"{h} 点 三 刻", f"{h} 点 四十五"))
  elif minute < 10:
    text = f"{h} 点 零{number_words(minute)} 分"
  else:
    text = f"{h} 点 {number_words(minute)}" + _pick(rng, ("", " 分"))
  if rng.random() < 0.6:
    if hour24 < 6:
      part = "凌晨"
    elif hour24 < 9:
      part = "早上"
    elif hour24 < 12:
      part = "上午"
    elif hour24 < 13:
      part = "中午"
    elif hour24 < 18:
      part = "下午"
    else:
      part = "晚上"
    text = f"{part} {text}"
  return "", text, ""


def _date(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  """A day: "明天", "下 周五", "星期三", "五 月 五 号"."""
  if form:
    raise ValueError(f"unknown cmn date form {form!r}")
  r = rng.random()
  if r < 0.3:
    return "", _pick(rng, ("今天", "明天", "明天", "后天", "这个 周末")), ""
  day = _pick(rng, _WEEKDAYS)
  weekday = _pick(rng, ("周" + day, "星期" + ("天" if day == "日" else day)))
  if r < 0.55:
    return "", weekday, ""
  if r < 0.75:
    return "", _pick(rng, ("下", "这", "下 个")) + " " + weekday, ""
  month, dom = int(rng.integers(1, 13)), int(rng.integers(1, 29))
  return "", f"{number_words(month)} 月 {number_words(dom)} 号", ""


def _duration(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  if form:
    raise ValueError(f"unknown cmn duration form {form!r}")
  r = rng.random()
  if r < 0.55:
    n = int(_pick(rng, (1, 2, 3, 4, 5, 5, 6, 7, 8, 10, 10, 12, 15, 15, 20, 25, 30, 40, 45)))
    text = f"{number_words(n, liang=True)} 分钟"
  elif r < 0.7:
    text = f"{number_words(int(_pick(rng, (10, 15, 20, 30, 30, 45, 50, 90))))} 秒"
  elif r < 0.85:
    text = _pick(rng, ("一个 小时", "一个 小时", "两个 小时", "三个 小时"))
  else:
    text = _pick(
      rng,
      (
        "半个 小时",
        "一个 半 小时",
        "一 刻钟",
        f"一个 小时 {number_words(int(_pick(rng, (10, 15, 20, 30))))} 分钟",
      ),
    )
  return "", text, ""


def _number(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  n = int(rng.integers(0, 16)) if rng.random() < 0.75 else 10 * int(rng.integers(2, 11))
  return "", number_words(n), ""


def _percent(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"百分之 {number_words(5 * int(rng.integers(1, 21)))}", ""


def _temperature(rng: np.random.Generator, form: str) -> tuple[str, str, str]:
  del form
  return "", f"{number_words(int(rng.integers(16, 31)))} 度", ""


GENERATORS = {
  "time": _time,
  "date": _date,
  "duration": _duration,
  "number": _number,
  "percent": _percent,
  "temperature": _temperature,
}


def inflect(slot_type: str, value: str, form: str) -> tuple[str, str, str]:
  """Chinese does not inflect."""
  if form:
    raise ValueError(f"unknown cmn {slot_type} form {form!r}")
  return "", value, ""


# ----------------------------------------------------------------------------
# Templates.

MACROS = {
  "pre": "[嘿|那个|喂|哎]",
  "qing": "[请|麻烦 你|帮 我]",
}

# fmt: off
TEMPLATES: dict[str, tuple[str, ...]] = {
  "play_music": (
    "$pre $qing (放|播放|来) 一首 {song}",
    "我 想 听 {song}",
    "(放|播放) [一下] {artist} 的 {song}",
    "(放|来) 点 {artist} 的 歌",
    "在 {room} 放 {song}",
    "用 {app} (放|播放) {song}",
    "随机 播放 {artist} 的 歌",
    "我 想 听 {artist} 的 歌",
    "播放 歌曲 {song}",
  ),
  "pause_music": (
    "$pre (暂停|暂停 一下|暂停 播放)",
    "把 (音乐|歌) (停 一下|暂停 了|关 了)",
    "请 暂停 (音乐|播放)",
    "先 别 放 了",
    "{room} 的 音乐 (停 一下|关 掉)",
    "(等 一下|稍等) 先 暂停",
    "别 放 歌 了 [我 要 打 电话]",
  ),
  "next_track": (
    "$pre (下 一首|切 歌|换 一首) [吧]",
    "(播放|放) 下 一首 [歌]",
    "这 首 (不 好听|不 喜欢) (换 一首|下 一首)",
    "$qing 跳过 这 首 歌",
    "(切|换) 到 下 一首",
    "换 首 歌 [吧]",
    "放 点 别的 歌",
  ),
  "volume_up": (
    "$pre 声音 (大 一点|开 大 点|调 大 一点)",
    "把 音量 调 高 [一点|一些]",
    "大声 一点",
    "$qing 把 声音 开 大 一点",
    "(听 不 清|听 不 见) (声音 大 点|调 大 声音)",
    "{room} 的 音量 调 大 一点",
    "音量 加 [一点]",
    "再 大声 点",
  ),
  "volume_down": (
    "$pre 声音 (小 一点|关 小 点|调 小 一点)",
    "把 音量 调 低 [一点|一些]",
    "小声 一点",
    "$qing 把 声音 关 小 一点",
    "太 吵 了 (声音 小 点|调 小 一点)",
    "{room} 的 音量 调 小 一点",
    "音量 减 [一点]",
    "再 小声 点",
  ),
  "volume_set": (
    "$pre 音量 调 到 {number}",
    "把 (音量|声音) (调|设) (到|成) {number}",
    "音量 (设置|调) (为|到) {percent}",
    "(把 音量 调 大 到|把 音量 调 小 到) {number}",
    "{room} 的 音量 调 到 {number}",
    "音量 {number}",
    "$qing 把 音量 设 为 {percent}",
  ),
  "set_alarm": (
    "$pre $qing 定 一个 [{date}] {time} 的 闹钟",
    "{date} {time} 叫 我 [起床]",
    "$qing 设 一个 {time} 的 闹钟",
    "我 {date} {time} 要 起床 [帮 我 定 个 闹钟]",
    "闹钟 (定 在|设 在|调 到) [{date}] {time}",
    "{time} 叫醒 我",
    "加 一个 {time} 的 闹钟",
    "帮 我 把 闹钟 定 到 {date} {time}",
  ),
  "cancel_alarm": (
    "$pre (取消|删掉|关掉) ({date} 的|{time} 的) 闹钟",
    "$qing 把 {date} 的 闹钟 (取消|关 了|删 了)",
    "{date} 不用 叫 我 [了]",
    "(删除|关闭) 所有 闹钟",
    "把 {time} 那个 闹钟 (删 了|取消 掉)",
    "{date} 不要 闹钟 了",
    "闹钟 (不用 了|取消 吧)",
    "别 定 {date} 的 闹钟 了",
  ),
  "set_timer": (
    "$pre $qing 定 个 {duration} 的 计时器",
    "计时 {duration}",
    "倒计时 {duration}",
    "{duration} 后 (叫 我|告诉 我)",
    "设 一个 {duration} 的 倒计时",
    "开始 计时 {duration}",
    "(煮 鸡蛋|煮 面|烤 蛋糕) 要 {duration} 帮 我 计 个 时",
    "定时 {duration}",
  ),
  "set_reminder": (
    "$pre [请|麻烦 你] 提醒 我 [{date}] [{time}] {task}",
    "{date} {time} 提醒 我 {task}",
    "(设|加) 一个 提醒 {date} {task}",
    "(别 让 我 忘 了|记得 提醒 我) {task}",
    "{time} 的 时候 提醒 我 {task}",
    "(新建|创建) 提醒 {task} [{date}]",
    "{date} 要 {task} (提醒 我 一下|记得 叫 我)",
    "帮 我 记 一下 {date} {task}",
  ),
  "call_contact": (
    "$pre 给 {contact} 打 个 电话",
    "打 电话 给 {contact}",
    "$qing 拨打 {contact} 的 电话",
    "呼叫 {contact}",
    "我 要 (给 {contact} 打 电话|跟 {contact} 通话)",
    "给 {contact} 打 (视频|视频 电话)",
    "联系 一下 {contact}",
    "用 免提 打给 {contact}",
  ),
  "send_message": (
    "$pre 给 {contact} 发 (条|个) (消息|短信|微信) 说 {message}",
    "告诉 {contact} {message}",
    "跟 {contact} 说 {message}",
    "$qing 发 短信 给 {contact} 内容 是 {message}",
    "发 微信 给 {contact} 说 {message}",
    "回复 {contact} {message}",
    "给 {contact} 留言 说 {message}",
    "通知 {contact} {message}",
  ),
  "get_weather": (
    "$pre [{city}] [{date}] 天气 怎么样",
    "{date} [{city}] 会 下雨 吗",
    "$qing 查 一下 {city} 的 天气",
    "{date} 要 带 伞 吗",
    "{city} (现在|今天) 多少 度",
    "{date} 的 天气 预报",
    "{city} {date} (冷 不 冷|热 不 热)",
    "{date} {city} (会 下雪 吗|是 晴天 吗)",
  ),
  "get_time": (
    "$pre 现在 几 点 [了]",
    "现在 (什么 时间|几 点 钟)",
    "{city} 现在 几 点",
    "(请|麻烦 你) 告诉 我 现在 的 时间",
    "{city} 现在 是 什么 时间",
    "几 点 了",
    "{city} 那边 现在 几 点 了",
    "(看|报) 一下 (现在 的|) 时间",
  ),
  "lights_on": (
    "$pre $qing 把 [{room} 的] 灯 打开",
    "打开 [{room} 的] 灯",
    "{room} 开灯",
    "$qing 开 一下 [{room} 的] 灯",
    "{room} (太 暗 了|好 黑) [开 下 灯]",
    "把 灯 (都|全部) 打开",
    "(点亮|打开) {room} 的 (灯光|照明)",
    "{room} 的 灯 开 一下",
  ),
  "lights_off": (
    "$pre $qing 把 [{room} 的] 灯 关 (掉|了)",
    "关掉 [{room} 的] 灯",
    "{room} 关灯",
    "$qing 关 一下 [{room} 的] 灯",
    "(我 要 睡觉 了|晚安) 把 灯 都 关 了",
    "关闭 {room} 的 (灯光|照明)",
    "{room} 的 灯 (关 一下|不用 开 了)",
    "灯 全部 关掉",
  ),
  "lights_dim": (
    "$pre 把 [{room} 的] 灯 调 暗 [一点]",
    "[{room} 的] 灯光 (调 暗|暗 一点)",
    "$qing 把 [{room} 的] 亮度 调 到 {percent}",
    "灯 太 亮 了 [调 暗 点]",
    "亮度 调 低 [一点]",
    "把 灯光 调 柔和 一点",
    "{room} 的 灯 调 到 {percent}",
    "(降低|减弱) [{room} 的] 灯光 亮度",
  ),
  "set_temperature": (
    "$pre 把 空调 调 到 {temperature}",
    "(温度|室温) (调 到|设 为|设成) {temperature}",
    "$qing 把 [{room} 的] 温度 调 成 {temperature}",
    "暖气 (开 到|调 到) {temperature}",
    "{room} 的 空调 调 到 {temperature}",
    "空调 (调 高|调 低) 到 {temperature}",
    "{room} 保持 {temperature}",
    "空调 {temperature}",
  ),
  "device_on": (
    "$pre $qing 把 [{room} 的] {device} 打开",
    "打开 [{room} 的] {device}",
    "开 一下 {device}",
    "$qing 开启 {device}",
    "{device} (开 一下|打开)",
    "启动 {device}",
    "我 要 用 {device} [帮 我 打开]",
    "{room} 的 {device} 开 起来",
  ),
  "device_off": (
    "$pre $qing 把 [{room} 的] {device} 关 (掉|了)",
    "关掉 [{room} 的] {device}",
    "关 一下 {device}",
    "$qing 关闭 {device}",
    "{device} 关 一下",
    "把 {device} 停 了",
    "{device} 不用 了 [关 了 吧]",
    "{room} 的 {device} 关 了",
  ),
  "navigate_to": (
    "$pre 导航 (到|去) {place}",
    "去 {place} 怎么 走",
    "(请|麻烦 你) 带 我 去 {place}",
    "(我 要|我 想) 去 {place}",
    "(导航 去|开车 去) {city}",
    "(规划|查 一下) 去 {city} 的 路线 [避开 高速]",
    "到 {place} 最 快 的 路线",
    "{place} 在 哪儿 [带 我 过去]",
  ),
  "add_to_list": (
    "$pre 把 {item} 加 到 购物 清单 (里|上)",
    "购物 清单 (加|添加) {item}",
    "$qing 在 清单 上 (加|记) 一下 {item}",
    "{item} 没 了 [记 到 购物 清单 上]",
    "记得 买 {item} [加 到 清单 里]",
    "往 购物 清单 里 加 {item}",
    "我 要 买 {item} (记 下来|加 到 清单 里)",
    "添加 {item} 到 购物 清单",
  ),
  "open_app": (
    "$pre 打开 {app}",
    "(启动|开启) {app}",
    "$qing 打开 一下 {app}",
    "(进入|切换 到) {app}",
    "我 要 (用|看) {app}",
    "打开 {app} 应用",
    "把 {app} 打开",
    "(去|上) {app} 看看",
  ),
  "translate": (
    "$pre {phrase} 用 {language} 怎么 说",
    "把 {phrase} 翻译 成 {language}",
    "{language} 的 {phrase} 怎么 说",
    "$qing 把 {phrase} 翻成 {language}",
    "{phrase} 的 {language} 是 什么",
    "{phrase} 翻译 成 {language}",
    "用 {language} 说 {phrase}",
    "我 想 知道 {phrase} 用 {language} 怎么 讲",
  ),
}
# fmt: on

# Mandarin matrix with English nouns and verbs, as bilingual speakers mix
# (Singapore, Malaysia, many offices): "把 volume 调 高 一点".
# fmt: off
CODE_SWITCH: dict[str, dict[str, tuple[str, ...]]] = {
  "en": {
    "play_music": (
      "帮 我 放 一下 我 的 <playlist>",
      "来 点 {artist@en} 的 <song>",
      "播放 {artist} 的 <new album>",
    ),
    "pause_music": (
      "<pause> 一下",
      "把 音乐 <pause> 了",
      "先 <stop> 一下",
    ),
    "next_track": (
      "<skip> 这 首",
      "切 到 <next song>",
      "这 首 <skip> 掉",
    ),
    "volume_up": (
      "把 <volume> 调 高 一点",
      "<volume> 大 一点",
      "<volume up> 一下",
    ),
    "volume_down": (
      "把 <volume> 调 低 一点",
      "<volume> 小 一点",
      "<volume down> 一下",
    ),
    "volume_set": (
      "<volume> 调 到 {number}",
      "把 <volume> 设 成 {percent}",
      "音量 调 到 {number@en}",
    ),
    "set_alarm": (
      "帮 我 定 个 {time} 的 <alarm>",
      "<set> 一个 [{date}] {time} 的 闹钟",
      "{date} {time} 的 <alarm> 设 一下",
    ),
    "cancel_alarm": (
      "把 {date} 的 <alarm> <cancel> 掉",
      "<cancel> 所有 闹钟",
      "{time} 的 <alarm> 不要 了",
    ),
    "set_timer": (
      "<set> 一个 {duration} 的 <timer>",
      "开 一个 {duration} 的 <timer>",
      "<timer> {duration}",
    ),
    "set_reminder": (
      "帮 我 <set> 一个 <reminder> {date} {task}",
      "加 个 <reminder> {time} {task}",
      "{date} {task} 记得 <remind> 我",
    ),
    "call_contact": (
      "给 {contact} 打 个 <call>",
      "<call> 一下 {contact}",
      "跟 {contact} 开 个 <video call>",
    ),
    "send_message": (
      "给 {contact} 发 个 <message> 说 {message}",
      "<whatsapp> {contact} 说 {message}",
      "给 {contact} 发 个 <text> 说 {message}",
    ),
    "get_weather": (
      "{city} 今天 的 <weather> 怎么样",
      "<check> 一下 {date} 的 天气",
      "{city} 的 <weather forecast> 怎么样",
    ),
    "get_time": (
      "<check> 一下 {city} 的 时间",
      "{city@en} 现在 几 点",
      "<check> 一下 现在 几 点",
    ),
    "lights_on": (
      "把 {room} 的 <light> 打开",
      "开 一下 <light>",
      "把 <lights> 全部 打开",
    ),
    "lights_off": (
      "把 <light> 关 掉",
      "{room} 的 <light> 关 了",
      "<lights off> 吧",
    ),
    "lights_dim": (
      "把 <light> 调 暗 一点",
      "<brightness> 调 到 {percent}",
      "把 {room} 的 <light> <dim> 一点",
    ),
    "set_temperature": (
      "把 <aircon> 调 到 {temperature}",
      "<aircon> 开 到 {temperature}",
      "<temperature> 调 成 {temperature}",
    ),
    "device_on": (
      "把 {device@en} 打开",
      "开 一下 {device@en}",
      "{room} 的 {device@en} 开 一下",
    ),
    "device_off": (
      "把 {device@en} 关 了",
      "关 一下 {device@en}",
      "{device@en} 关 掉 吧",
    ),
    "navigate_to": (
      "<navigate> 到 {place}",
      "用 <google maps> 导航 去 {place}",
      "帮 我 <check> 一下 去 {place} 的 路线",
    ),
    "add_to_list": (
      "把 {item@en} 加 到 <shopping list> 里",
      "<shopping list> 加 一下 {item}",
      "{item} 加 到 <list> 里",
    ),
    "open_app": (
      "帮 我 <open> 一下 {app@en}",
      "<open> {app}",
    ),
    "translate": (
      "{phrase} 用 <english> 怎么 说",
      "{phrase@en} 是 什么 意思",
      "把 {phrase} <translate> 成 {language}",
    ),
  },
}
# fmt: on

SWITCHABLE: dict[str, tuple[str, ...]] = {"en": ("song", "artist", "app")}

# ----------------------------------------------------------------------------
# Entities.

# fmt: off
_FULL_NAMES = (
  "张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄丽", "周杰", "吴军", "徐明",
  "孙丽", "马超", "朱琳", "胡斌", "郭强", "何静", "林峰", "高洁", "罗平", "郑爽", "梁浩",
  "谢娜", "宋佳", "唐宁", "许晴", "韩雪", "冯刚", "邓超", "曹颖", "彭博", "曾敏", "肖红",
  "田亮", "董洁", "袁泉", "潘伟", "于洋", "蒋勤", "蔡明", "余波", "杜鹃", "程浩", "苏晴",
  "魏巍", "吕娜", "丁磊", "任杰", "沈腾", "卢静", "姜文", "崔健", "钟华", "谭雪", "陆毅",
  "汪洋", "范冰", "金鑫", "石磊", "廖凡", "夏雨", "方圆", "白露", "邹静", "孟飞", "秦岚",
  "江涛", "史进", "顾欣", "侯勇", "邵峰", "龙飞", "万琪", "段宇", "雷鸣", "钱坤", "汤圆圆",
  "尹航", "黎明", "易晓", "常青", "武莉", "乔峰", "贺佳", "赖雪", "龚磊", "文静", "庞博",
)
_NICKNAMES = (
  "小明", "小红", "小丽", "小军", "小芳", "小王", "小李", "老张", "老李", "老王", "老陈", "阿强", "阿华", "阿美",
)
_TITLES = (
  "王 老师", "李 经理", "张 医生", "刘 总", "陈 阿姨", "赵 叔叔", "孙 师傅", "周 主任", "吴 老板", "郑 律师",
)
_RELATIVES = (
  "妈妈", "爸爸", "老婆", "老公", "哥哥", "姐姐", "弟弟", "妹妹", "爷爷", "奶奶", "外公", "外婆", "儿子", "女儿", "老板", "舅舅",
  "姑姑",
)
# fmt: on

# fmt: off
ENTITIES: dict[str, tuple[str, ...]] = {
  "contact": _FULL_NAMES + _NICKNAMES + _TITLES + _RELATIVES,
  "song": (
    "月亮 代表 我 的 心", "甜蜜蜜", "小 幸运", "后来", "童话", "十年", "红豆", "传奇",
    "平凡 之 路", "成都", "南山南", "演员", "光年 之外", "泡沫", "丑八怪", "小 苹果",
    "最 炫 民族风", "老 男孩", "突然 好想 你", "倔强", "温柔", "知足", "孤勇者", "起风 了",
    "体面", "凉凉", "大鱼", "匆匆 那年", "那些 年", "小 情歌", "我 的 歌声 里", "董 小姐",
    "父亲", "朋友", "真心 英雄", "好汉 歌", "北京 欢迎 你", "茉莉花", "我 和 我 的 祖国",
    "烟花 易 冷", "枫", "不能 说 的 秘密", "发 如 雪", "菊花 台", "兰亭序", "东风 破",
    "千里 之外", "听 妈妈 的 话", "蒲公英 的 约定", "以 父 之 名", "双截棍",
    "给 我 一首 歌 的 时间", "可惜 不 是 你", "勇气", "宁夏", "江南", "曹操",
    "一千 年 以后", "她 说", "认真 的 雪", "刚刚 好", "意外", "你 还要 我 怎样",
    "像 我 这样 的 人", "消愁", "月半 小夜曲", "吻别", "一路上 有 你", "情非得已", "囚鸟",
    "当 你 老 了", "贝加尔湖 畔", "成全", "遇见", "隐形 的 翅膀", "如果 没有 你",
    "后来 的 我们", "富士山 下", "红日", "海阔天空", "光辉 岁月", "真的 爱 你", "喜欢 你",
    "说 散 就 散", "年少 有为", "少年", "生僻字", "学 猫 叫", "稻香", "青花瓷", "晴天",
    "七里香", "告白 气球", "夜曲", "简单 爱", "说好 的 幸福 呢", "安静", "搁浅", "蜗牛",
    "龙卷风", "开不了口", "爱 在 西元前", "半岛 铁盒", "彩虹", "夜空 中 最 亮 的 星",
    "追梦 赤子心", "难忘 今宵", "新 贵妃 醉酒", "卷珠帘", "漂洋过海 来 看 你", "小 酒窝",
    "那些 花儿", "后会无期", "爱 如 潮水", "铁血 丹心", "沧海 一 声 笑", "上海 滩",
    "但愿 人 长久", "我 只 在乎 你", "外面 的 世界", "一 剪 梅",
  ),
  "artist": (
    "周杰伦", "邓丽君", "王菲", "林俊杰", "陈奕迅", "张学友", "刘德华", "蔡依林", "孙燕姿",
    "五月天", "邓紫棋", "薛之谦", "李荣浩", "毛不易", "华晨宇", "张杰", "周深", "李健",
    "朴树", "许巍", "汪峰", "那英", "王力宏", "陶喆", "张惠妹", "梁静茹", "莫文蔚", "田馥甄",
    "萧敬腾", "张韶涵", "杨宗纬", "李宗盛", "罗大佑", "崔健", "齐秦", "费玉清", "刘若英",
    "任贤齐", "张信哲", "周华健", "伍佰", "郭富城", "张国荣", "梅艳芳", "黄家驹", "谭咏麟",
    "李克勤", "容祖儿", "杨千嬅", "陈慧琳", "郑秀文", "谢霆锋", "张靓颖", "李宇春", "韩红",
    "刀郎", "凤凰传奇", "筷子兄弟", "赵雷", "宋冬野", "马頔", "陈粒", "徐佳莹", "林宥嘉",
    "杨丞琳", "潘玮柏", "王心凌", "张震岳", "庾澄庆", "苏打绿", "蔡健雅", "范玮琪", "许嵩",
    "汪苏泷", "胡彦斌", "郁可唯", "单依纯", "王源", "易烊千玺", "王俊凯", "时代少年团",
    "告五人", "张碧晨", "李玉刚", "宋祖英", "腾格尔", "降央卓玛", "房东 的 猫", "郭顶",
  ),
  "city": (
    "北京", "上海", "广州", "深圳", "天津", "重庆", "成都", "杭州", "南京", "武汉", "西安",
    "苏州", "郑州", "长沙", "沈阳", "青岛", "宁波", "东莞", "无锡", "厦门", "福州", "济南",
    "大连", "哈尔滨", "长春", "石家庄", "合肥", "昆明", "南昌", "南宁", "贵阳", "太原",
    "兰州", "乌鲁木齐", "呼和浩特", "银川", "西宁", "拉萨", "海口", "三亚", "珠海", "佛山",
    "中山", "惠州", "汕头", "温州", "绍兴", "嘉兴", "金华", "台州", "扬州", "常州", "南通",
    "徐州", "烟台", "威海", "潍坊", "保定", "唐山", "秦皇岛", "洛阳", "开封", "桂林", "丽江",
    "大理", "张家界", "黄山", "香港", "澳门", "台北", "高雄", "台中", "东京", "大阪", "首尔",
    "新加坡", "曼谷", "吉隆坡", "悉尼", "墨尔本", "伦敦", "巴黎", "柏林", "罗马", "纽约",
    "洛杉矶", "旧金山", "温哥华", "多伦多", "莫斯科", "迪拜", "芝加哥", "西雅图", "波士顿",
    "马德里", "巴塞罗那", "阿姆斯特丹", "维也纳", "布拉格", "伊斯坦布尔", "开罗", "河内",
    "雅加达", "马尼拉", "新德里", "孟买", "芜湖", "宜昌", "襄阳", "岳阳", "株洲", "柳州",
    "泉州", "漳州", "赣州", "九江", "景德镇", "绵阳", "宜宾", "遵义", "包头", "鄂尔多斯",
    "大同", "邯郸", "淄博", "临沂", "盐城", "镇江", "湖州", "舟山",
  ),
  "place": (
    "机场", "火车站", "高铁站", "汽车站", "地铁站", "最近 的 加油站", "最近 的 药店", "医院",
    "超市", "商场", "邮局", "图书馆", "银行", "健身房", "公园", "海边", "博物馆", "市中心",
    "公司", "学校", "幼儿园", "动物园", "体育馆", "酒店", "牙科 诊所", "电影院", "菜市场",
    "最近 的 停车场", "充电站", "天安门", "外滩", "故宫", "人民 广场", "大学 城", "派出所",
    "最近 的 咖啡店",
  ),
  "room": (
    "客厅", "卧室", "主卧", "次卧", "厨房", "卫生间", "浴室", "餐厅", "书房", "阳台", "走廊",
    "玄关", "儿童房", "客房", "车库", "地下室", "衣帽间", "洗衣房",
  ),
  "device": (
    "电视", "空调", "风扇", "暖气", "加湿器", "除湿机", "扫地 机器人", "洗衣机", "烘干机",
    "洗碗机", "热水器", "咖啡机", "电饭煲", "空气 净化器", "音箱", "电暖器", "电热毯",
    "烤箱", "微波炉", "投影仪", "油烟机", "新风 系统", "电水壶",
  ),
  "app": (
    "微信", "支付宝", "淘宝", "抖音", "微博", "美团", "高德 地图", "百度 地图", "滴滴",
    "京东", "拼多多", "小红书", "哔哩哔哩", "网易云 音乐", "饿了么", "钉钉", "相机", "日历",
    "设置", "计算器", "相册", "时钟", "备忘录", "浏览器", "大众 点评", "携程", "快手", "知乎",
    "爱奇艺", "腾讯 视频", "优酷",
  ),
  "item": (
    "牛奶", "鸡蛋", "面包", "黄油", "咖啡", "苹果", "香蕉", "卫生纸", "洗洁精", "橙汁",
    "鸡胸肉", "猪肉", "牛肉", "奶酪", "酸奶", "大米", "面条", "西红柿", "洋葱", "大蒜",
    "土豆", "食用油", "花生酱", "草莓酱", "纸巾", "洗衣液", "电池", "灯泡", "洗发水", "牙膏",
    "狗粮", "猫砂", "冰淇淋", "速冻 饺子", "三文鱼", "生菜", "胡萝卜", "柠檬", "面粉", "白糖",
    "盐", "胡椒粉", "茶叶", "矿泉水", "啤酒", "红酒", "薯片", "饼干", "燕麦片", "蜂蜜",
    "番茄酱", "酱油", "醋", "豆腐", "青菜", "白菜", "黄瓜", "葡萄", "蓝莓", "垃圾袋",
    "保鲜膜", "纸尿裤", "湿巾", "防晒霜", "方便面", "榨菜", "香菜", "生姜", "大葱",
  ),
  "task": (
    "给 牙医 打 电话", "倒 垃圾", "给 花 浇水", "接 孩子", "吃 药", "交 电费", "买 牛奶",
    "遛 狗", "给 妈妈 打 电话", "发 报告", "订 餐厅", "办 护照", "取 衣服", "喂 猫",
    "关 煤气", "挪 车", "给 手机 充电", "还 书", "买 生日 礼物", "剪 头发", "喝水", "锁 门",
    "给 奶奶 打 电话", "去 银行", "买 菜", "交 房租",
  ),
  "message": (
    "我 会 晚 点 到", "我 十 分钟 后 到", "我 在 路上 了", "饭 做好 了", "会议 三 点 开始",
    "我 堵车 了", "我 待会儿 给 你 打 电话", "我 想 你 了", "我 爱 你", "我 在 超市",
    "我 下班 了", "我 钥匙 忘 带 了", "票 买到 了", "孩子们 睡 了", "家里 没 牛奶 了",
    "我 放学 去 接 你", "我 快 到 了", "快递 到 了", "我 回家 吃 晚饭", "火车 晚点 了",
    "我 在 门口", "这边 下雨 了",
  ),
  "phrase": (
    "早上 好", "非常 感谢", "洗手间 在 哪儿", "这个 多少 钱", "我 听 不 懂",
    "很 高兴 认识 你", "晚安", "打扰 一下", "对不起", "买单", "你 会 说 英语 吗", "我 爱 你",
    "生日 快乐", "明天 见", "火车站 在 哪儿", "我 饿 了", "你 能 帮 我 吗", "你 叫 什么 名字",
    "你 好 吗", "祝 你 有 美好 的 一 天", "干杯", "我 对 花生 过敏",
  ),
  "language": (
    "英语", "法语", "德语", "西班牙语", "意大利语", "葡萄牙语", "日语", "韩语", "俄语",
    "阿拉伯语", "印地语", "泰语", "越南语", "粤语", "荷兰语", "土耳其语", "希腊语",
  ),
}
# fmt: on
