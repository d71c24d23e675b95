// A minimal JSON value, parser and writer: enough to read fio's --output-format=json and to write
// kaio_bench --json. Not a general-purpose library (no \u escapes beyond ASCII, numbers as double).
#ifndef KAIO_TOOLS_JSON_H_
#define KAIO_TOOLS_JSON_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kaio_bench {

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Type type() const { return type_; }
  double number() const { return type_ == Type::kNumber ? number_ : 0; }
  const std::string& string() const { return string_; }
  const std::vector<JsonValue>& array() const { return array_; }
  // Member lookup; a null value when absent (so lookups chain).
  const JsonValue& operator[](const std::string& key) const;
  const JsonValue& operator[](size_t index) const;
  bool has(const std::string& key) const { return object_.count(key) != 0; }
  const std::map<std::string, JsonValue>& object() const { return object_; }

  static absl::StatusOr<JsonValue> Parse(const std::string& text);

 private:
  friend class JsonParser;
  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::map<std::string, JsonValue> object_;
};

// A streaming writer with indentation. Keys and values are added in order; the caller keeps the
// nesting right (Begin/End pairs).
class JsonWriter {
 public:
  void BeginObject(const std::string& key = "");
  void EndObject();
  void BeginArray(const std::string& key = "");
  void EndArray();
  void String(const std::string& key, const std::string& value);
  void Number(const std::string& key, double value);
  void Integer(const std::string& key, int64_t value);
  void Bool(const std::string& key, bool value);
  void Null(const std::string& key);
  const std::string& text() const { return out_; }

  static std::string Quote(const std::string& s);

 private:
  void Prefix(const std::string& key);
  std::string out_;
  std::vector<bool> first_;  // per nesting level: nothing written yet
};

}  // namespace kaio_bench

#endif  // KAIO_TOOLS_JSON_H_
