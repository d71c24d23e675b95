#include "tools/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace kaio_bench {

namespace {
const JsonValue& NullValue() {
  static const JsonValue* const null = new JsonValue();
  return *null;
}
}  // namespace

const JsonValue& JsonValue::operator[](const std::string& key) const {
  auto it = object_.find(key);
  return it == object_.end() ? NullValue() : it->second;
}

const JsonValue& JsonValue::operator[](size_t index) const {
  return index < array_.size() ? array_[index] : NullValue();
}

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}

  absl::StatusOr<JsonValue> ParseDocument() {
    JsonValue v;
    if (!Value(v, 0)) return absl::InvalidArgumentError(absl::StrCat("JSON: ", error_, " at offset ", pos_));
    Space();
    if (pos_ != s_.size()) return absl::InvalidArgumentError(absl::StrCat("JSON: trailing text at offset ", pos_));
    return v;
  }

 private:
  void Space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) ++pos_;
  }
  bool Fail(const char* what) {
    error_ = what;
    return false;
  }
  bool Literal(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) != 0) return Fail("bad literal");
    pos_ += n;
    return true;
  }
  bool String(std::string& out) {
    if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a string");
    ++pos_;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c == '\\') {
        if (pos_ >= s_.size()) return Fail("bad escape");
        char e = s_[pos_++];
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'u': {
            if (pos_ + 4 > s_.size()) return Fail("bad \\u escape");
            long code = std::strtol(s_.substr(pos_, 4).c_str(), nullptr, 16);
            pos_ += 4;
            out += code < 0x80 ? static_cast<char>(code) : '?';
            break;
          }
          default: out += e; break;
        }
      } else {
        out += c;
      }
    }
    if (pos_ >= s_.size()) return Fail("unterminated string");
    ++pos_;
    return true;
  }
  bool Value(JsonValue& v, int depth) {
    if (depth > 64) return Fail("nested too deeply");
    Space();
    if (pos_ >= s_.size()) return Fail("unexpected end");
    char c = s_[pos_];
    if (c == '{') {
      v.type_ = JsonValue::Type::kObject;
      ++pos_;
      Space();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      while (true) {
        Space();
        std::string key;
        if (!String(key)) return false;
        Space();
        if (pos_ >= s_.size() || s_[pos_] != ':') return Fail("expected ':'");
        ++pos_;
        if (!Value(v.object_[key], depth + 1)) return false;
        Space();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_.size() && s_[pos_] == '}') {
          ++pos_;
          return true;
        }
        return Fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = JsonValue::Type::kArray;
      ++pos_;
      Space();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      while (true) {
        v.array_.emplace_back();
        if (!Value(v.array_.back(), depth + 1)) return false;
        Space();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_.size() && s_[pos_] == ']') {
          ++pos_;
          return true;
        }
        return Fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = JsonValue::Type::kString;
      return String(v.string_);
    }
    if (c == 't') {
      v.type_ = JsonValue::Type::kBool;
      v.bool_ = true;
      return Literal("true");
    }
    if (c == 'f') {
      v.type_ = JsonValue::Type::kBool;
      return Literal("false");
    }
    if (c == 'n') return Literal("null");
    const char* start = s_.c_str() + pos_;
    char* end = nullptr;
    double d = std::strtod(start, &end);
    if (end == start) return Fail("unexpected character");
    pos_ += static_cast<size_t>(end - start);
    v.type_ = JsonValue::Type::kNumber;
    v.number_ = d;
    return true;
  }

  const std::string& s_;
  size_t pos_ = 0;
  const char* error_ = "";
};

absl::StatusOr<JsonValue> JsonValue::Parse(const std::string& text) { return JsonParser(text).ParseDocument(); }

// ---------------------------------------------------------------- writer

std::string JsonWriter::Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

void JsonWriter::Prefix(const std::string& key) {
  if (!first_.empty()) {
    if (!first_.back()) out_ += ",";
    first_.back() = false;
    out_ += "\n";
    out_.append(2 * first_.size(), ' ');
    if (!key.empty()) absl::StrAppend(&out_, Quote(key), ": ");
  }
}

void JsonWriter::BeginObject(const std::string& key) {
  Prefix(key);
  out_ += "{";
  first_.push_back(true);
}

void JsonWriter::EndObject() {
  bool empty = first_.back();
  first_.pop_back();
  if (!empty) {
    out_ += "\n";
    out_.append(2 * first_.size(), ' ');
  }
  out_ += "}";
  if (first_.empty()) out_ += "\n";
}

void JsonWriter::BeginArray(const std::string& key) {
  Prefix(key);
  out_ += "[";
  first_.push_back(true);
}

void JsonWriter::EndArray() {
  bool empty = first_.back();
  first_.pop_back();
  if (!empty) {
    out_ += "\n";
    out_.append(2 * first_.size(), ' ');
  }
  out_ += "]";
}

void JsonWriter::String(const std::string& key, const std::string& value) {
  Prefix(key);
  out_ += Quote(value);
}

void JsonWriter::Number(const std::string& key, double value) {
  Prefix(key);
  if (!std::isfinite(value)) {
    out_ += "null";
    return;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", value);
  out_ += buf;
}

void JsonWriter::Integer(const std::string& key, int64_t value) {
  Prefix(key);
  absl::StrAppend(&out_, value);
}

void JsonWriter::Bool(const std::string& key, bool value) {
  Prefix(key);
  out_ += value ? "true" : "false";
}

void JsonWriter::Null(const std::string& key) {
  Prefix(key);
  out_ += "null";
}

}  // namespace kaio_bench
