"""README front matter ("model card" metadata): a small YAML subset.

The Hub reads the YAML block between the first two `---` lines of README.md
into `cardData`, and /api/validate-yaml rejects a README whose block is not
valid YAML. This parser understands what cards use in practice: mappings,
block and flow lists, nested mappings by indentation, quoted and plain
scalars, block scalars (| and >) and comments. Anything else is an error with
the line number, which is all validate-yaml needs to report.
"""

import json
import re


class YamlError(ValueError):
    pass


_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s#'"{\[][^#]*?|[^\s#'"{\[])\s*:(?:\s+(.*)|)$""")


def split_front_matter(text):
    """The YAML text between the opening and closing '---' lines, or None."""
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        return None
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i])
    return None


def _scalar(text, lineno):
    text = text.strip()
    if text.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            raise YamlError("line %d: unterminated double-quoted string" % lineno) from None
        rest = text[end:].strip()
        if rest and not rest.startswith("#"):
            raise YamlError("line %d: unexpected text after a quoted string" % lineno)
        return value
    if text.startswith("'"):
        m = re.match(r"^'((?:[^']|'')*)'\s*(#.*)?$", text)
        if not m:
            raise YamlError("line %d: unterminated single-quoted string" % lineno)
        return m.group(1).replace("''", "'")
    text = re.sub(r"\s+#.*$", "", text)
    if text.startswith("[") or text.startswith("{"):
        return _flow(text, lineno)
    if text.startswith(("&", "*", "!", "%", "@", "`")):
        raise YamlError("line %d: unsupported YAML syntax %r" % (lineno, text[0]))
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("null", "~", ""):
        return None
    if re.match(r"^[-+]?\d+$", text):
        return int(text)
    if re.match(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$", text):
        return float(text)
    return text


def _flow(text, lineno):
    """A one-line flow list or mapping ([a, b] / {k: v})."""
    close = "]" if text[0] == "[" else "}"
    if not text.endswith(close):
        raise YamlError("line %d: unterminated flow collection" % lineno)
    inner = text[1:-1].strip()
    items = []
    depth = 0
    cur = ""
    quote = None
    for ch in inner:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        cur += ch
    if cur.strip():
        items.append(cur)
    if close == "]":
        return [_scalar(i, lineno) for i in items]
    out = {}
    for item in items:
        k, sep, v = item.partition(":")
        if not sep:
            raise YamlError("line %d: expected 'key: value' in a flow mapping" % lineno)
        out[str(_scalar(k, lineno))] = _scalar(v, lineno)
    return out


class _Parser:
    def __init__(self, text, first_line=1):
        self.lines = text.split("\n")
        self.pos = 0
        self.base = first_line

    def peek(self):
        """(indent, content, line number) of the next meaningful line, or None."""
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                self.pos += 1
                continue
            lead = line[:len(line) - len(line.lstrip())]
            if "\t" in lead:
                raise YamlError("line %d: tabs are not allowed for indentation" % (self.pos + self.base))
            return len(lead), stripped, self.pos + self.base
        return None

    def node(self, indent):
        p = self.peek()
        if p is None or p[0] < indent:
            return None
        if p[1] == "-" or p[1].startswith("- "):
            return self.seq(p[0])
        return self.mapping(p[0])

    def mapping(self, indent):
        out = {}
        while True:
            p = self.peek()
            if p is None or p[0] < indent:
                return out
            ind, content, lineno = p
            if ind > indent:
                raise YamlError("line %d: bad indentation" % lineno)
            if content == "-" or content.startswith("- "):
                raise YamlError("line %d: a list item where a 'key: value' was expected" % lineno)
            m = _KEY.match(content)
            if not m:
                raise YamlError("line %d: expected 'key: value', got %r" % (lineno, content))
            key = _scalar(m.group(1), lineno)
            rest = (m.group(2) or "").strip()
            self.pos += 1
            if rest in ("|", ">", "|-", ">-", "|+", ">+"):
                value = self.block_scalar(indent, rest)
            elif rest and not rest.startswith("#"):
                value = _scalar(rest, lineno)
            else:
                q = self.peek()
                if q and (q[0] > indent or (q[0] == indent and (q[1] == "-" or q[1].startswith("- ")))):
                    value = self.node(q[0])
                else:
                    value = None
            out[str(key)] = value

    def seq(self, indent):
        out = []
        while True:
            p = self.peek()
            if p is None or p[0] < indent:
                return out
            ind, content, lineno = p
            if ind > indent:
                raise YamlError("line %d: bad indentation" % lineno)
            if not (content == "-" or content.startswith("- ")):
                return out
            rest = content[1:].strip()
            if not rest:
                self.pos += 1
                out.append(self.node(indent + 1))
            elif _KEY.match(rest) and not rest.startswith(("[", "{", '"', "'")):
                col = ind + len(content) - len(content[1:].lstrip())
                self.lines[self.pos] = " " * col + rest
                out.append(self.mapping(col))
            else:
                self.pos += 1
                out.append(_scalar(rest, lineno))

    def block_scalar(self, indent, style):
        lines = []
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            lines.append(line)
            self.pos += 1
        while lines and not lines[-1].strip():
            lines.pop()
        strip = min((len(x) - len(x.lstrip(" ")) for x in lines if x.strip()), default=0)
        lines = [x[strip:] for x in lines]
        text = "\n".join(lines) if style[0] == "|" else " ".join(x.strip() for x in lines)
        return text if style.endswith("-") else text + "\n"


def parse_yaml(text, first_line=1):
    """The mapping a YAML block describes; YamlError if it is not valid.

    first_line is the line number of the block's first line (for messages)."""
    parser = _Parser(text, first_line)
    value = parser.node(0)
    if parser.peek() is not None:
        raise YamlError("line %d: unexpected content" % parser.peek()[2])
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise YamlError("the metadata must be a mapping (key: value), not a list")
    return value


def card_data(readme_text):
    """cardData of a README (None without valid front matter)."""
    block = split_front_matter(readme_text)
    if block is None:
        return None
    try:
        return parse_yaml(block, 2)
    except YamlError:
        return None


def validate(readme_text):
    """(errors, warnings) as lists of {"message": ...}, for /api/validate-yaml."""
    block = split_front_matter(readme_text)
    if block is None:
        return [], []
    try:
        parse_yaml(block, 2)
    except YamlError as e:
        return [{"message": "Invalid YAML in README.md metadata: %s" % e}], []
    return [], []
